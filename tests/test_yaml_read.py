"""The one verified YAML reader (flareseg.yaml_read) and the config loader on top of it: duplicate
keys, alias bombs, non-files and huge values give one bounded ConfigError line, fast."""
from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from flareseg.config import ConfigError, load_config
from flareseg.errors import MAX_MESSAGE_CHARS
from flareseg.yaml_read import MAX_NODES, parse_yaml, read_yaml

REPO = Path(__file__).resolve().parents[1]

#: nine levels of nine aliases: 9**9 strings from 342 bytes (the issue's 379-byte file ran 40-55 s)
BOMB = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_duplicate_block_names_key_and_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("inference:\n  tta: true\ntrain_fine:\n  epochs: 3\ninference:\n  step_size: 0.7\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:5: duplicate key 'inference'") and "first at line 1" in msg


def test_duplicate_nested_and_flow_keys_are_refused():
    with pytest.raises(ConfigError, match=r"S:3: duplicate key 'epochs' \(first at line 2\)"):
        parse_yaml("train_fine:\n  epochs: 3\n  epochs: 4\n", "S")
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        parse_yaml("{a: 1, b: 2, a: 3}", "S")
    # distinct keys that only look alike are fine (1 and "1"), and merge keys may be overridden
    assert parse_yaml("1: a\n'1': b\n", "S") == {1: "a", "1": "b"}
    assert parse_yaml("base: &b {p: 1, q: 2}\nd:\n  <<: *b\n  p: 5\n", "S")["d"] == {"p": 5, "q": 2}


def test_duplicate_key_in_set_override_is_refused():
    with pytest.raises(ConfigError, match="--set .*duplicate key 'tta'"):
        load_config(None, ["inference={tta: true, tta: false}"])


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    # measured in memory, not seconds (a loaded machine must not decide it): the bomb expands to
    # gigabytes when constructed; refused by the node count on the composed document, reading it
    # allocates a few megabytes at most
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    assert p.stat().st_size < 400
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=f"aliases expand to more than {MAX_NODES}") as e:
            load_config(p)
        with pytest.raises(ConfigError, match="alias bomb"):
            load_config(None, ["data={" + BOMB.replace("\n", ", ").rstrip(", ") + "}"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, peak
    assert str(e.value).startswith(str(p))


def test_modest_aliases_still_work(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("fine: &plan\n  batch_size: 2\ncoarse: *plan\n")
    cfg = load_config(p)
    assert cfg.fine.batch_size == cfg.coarse.batch_size == 2


def test_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match="refers to its own anchor"):
        parse_yaml("x: &x [1, *x]\n", "S")


@pytest.mark.parametrize("text", [
    "train_fine:\n  epochs: [" + ", ".join(["1"] * 60_000) + "]\n",      # a list where a number goes
    "train_fine:\n  epochs: '" + "x" * 500_000 + "'\n",                   # a huge string
    "train_fine:\n  loss: '" + "y" * 500_000 + "'\n",                     # not one of the choices
    "train_fine:\n  " + "k" * 500_000 + ": 1\n",                          # a huge unknown key
    "cto:\n  margin_xy: [" + ", ".join(["300"] * 60_000) + "]\n",         # out of range, long
])
def test_every_message_is_bounded(tmp_path, text):
    p = tmp_path / "big.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert len(msg) <= MAX_MESSAGE_CHARS and "\n" not in msg and str(p) in msg


def test_set_value_message_is_bounded():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train_fine.epochs=" + "z" * 300_000])
    assert len(str(e.value)) <= MAX_MESSAGE_CHARS and "train_fine.epochs" in str(e.value)


def test_non_regular_and_oversized_files_are_refused(tmp_path):
    fifo = tmp_path / "cfg.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_yaml(fifo)     # would block forever if opened (no writer): returning at all is the test
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 2_000_000 + "\n")
    with pytest.raises(ConfigError, match="more than the 1048576"):
        load_config(big)


def test_shipped_configs_read_the_same_as_plain_safe_load():
    import yaml
    for p in sorted((REPO / "configs").glob("*.yaml")):
        assert read_yaml(p) == yaml.safe_load(p.read_text()), p


@pytest.mark.parametrize("text,names", [
    ("train_fine:\n  epochs: 3\ninference:\n  tta: true\ninference:\n  tta: false\n", [":5:", "'inference'"]),
    (BOMB, ["alias bomb"]),
])
def test_pipeline_refuses_before_work_one_line(tmp_path, capsys, caplog, text, names):
    from bad_input import check_contract, md5_tree, run_command
    from flareseg.pipeline.__main__ import main as pipeline_main
    cfg = tmp_path / "my.yaml"
    cfg.write_text(text)
    before = md5_tree([cfg])
    out = run_command(pipeline_main, ["1", "--config", cfg, "--work", tmp_path / "w"], capsys, caplog)
    check_contract(out, rc=2, names=[str(cfg), *names], reason="",
                   inputs_before=before, inputs=[cfg], outputs=[tmp_path])
    assert not (tmp_path / "w").exists()
    assert len([ln for ln in out.lines if ln.strip()]) == 1, out.lines


@pytest.mark.parametrize("command", [
    ["predict", "-i", "T/in", "-o", "T/out", "-m", "T/model"],
    ["evaluate", "--pred", "T/in", "--gt", "T/in", "--out", "T/out"],
    ["clean", "--labels", "T/in", "--out", "T/out"],
    ["phantoms", "--out", "T/out"],
], ids=lambda c: c[0])
def test_every_command_with_config_refuses_duplicate_keys(tmp_path, capsys, caplog, command):
    from bad_input import check_contract, md5_tree, run_command
    from flareseg.cli import main
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("inference:\n  tta: true\ninference:\n  tta: false\n")
    (tmp_path / "in").mkdir()
    before = md5_tree([cfg, tmp_path / "in"])
    argv = [a.replace("T/", f"{tmp_path}/") for a in command] + ["--config", str(cfg)]
    out = run_command(main, argv, capsys, caplog)
    check_contract(out, rc=2, names=[f"{cfg}:3", "'inference'"], reason="duplicate key",
                   inputs_before=before, inputs=[cfg, tmp_path / "in"], outputs=[tmp_path])
    assert not (tmp_path / "out").exists()
