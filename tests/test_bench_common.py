"""bench/: one shared module for process settings, interleaved timing and the machine line; the
benches run as ``python -m bench.NAME`` with no ``sys.path`` edits."""
from __future__ import annotations

import os
from pathlib import Path

from bench._common import interleaved, machine_line, nnunet_process

BENCH = Path(__file__).resolve().parents[1] / "bench"
#: still converted by the lead (two engineers edit it in parallel); remove when it is
PENDING: set[str] = set()


def test_interleaved_alternates_and_reduces():
    calls = []
    out = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 3
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
    raw = interleaved({"a": lambda: None}, 4, reduce=None)
    assert len(raw["a"]) == 4
    calls.clear()
    own = interleaved({"a": lambda: calls.append("a") or 2.0, "b": lambda: calls.append("b") or 3.0}, 3,
                      rotate=True, self_timed=True)
    assert calls == ["a", "b", "b", "a", "a", "b"] and own == {"a": 2.0, "b": 3.0}


def test_nnunet_process_sets_the_environment(monkeypatch):
    for k in ("nnUNet_compile", "nnUNet_n_proc_DA", "nnUNet_def_n_proc"):
        monkeypatch.delenv(k, raising=False)
    nnunet_process("cpu", workers=0, def_n_proc=3)
    assert (os.environ["nnUNet_compile"], os.environ["nnUNet_n_proc_DA"], os.environ["nnUNet_def_n_proc"]) == ("f", "0", "3")
    monkeypatch.setenv("nnUNet_def_n_proc", "7")          # the caller's own setting wins
    monkeypatch.delenv("nnUNet_compile")
    nnunet_process("cuda", def_n_proc=3)
    assert os.environ["nnUNet_def_n_proc"] == "7" and "nnUNet_compile" not in os.environ
    assert "nnUNet_n_proc_DA=0" in machine_line("cpu") and machine_line().startswith("machine: ")


def test_no_bench_edits_sys_path_or_writes_its_own_machine_line():
    for f in sorted(BENCH.glob("*.py")):
        if f.name in PENDING or f.name == "_common.py":
            continue
        text = f.read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, f.name
        assert "platform." not in text, f"{f.name}: use bench._common.machine_line"


def test_write_report_prints_and_writes_whole_files(tmp_path, capsys):
    from bench._common import write_report
    out = tmp_path / "docs" / "benchmarks" / "x.md"
    out.parent.mkdir(parents=True)
    write_report("old report\n", out, echo=False)
    write_report("# new\n", out)
    assert out.read_text() == "# new\n"                          # its own report replaced, folders kept
    assert sorted(p.name for p in out.parent.iterdir()) == [".flareseg-written.jsonl", "x.md"]   # no temp left
    assert "# new" in capsys.readouterr().out
    write_report("# quiet\n", tmp_path / "new" / "y.md", echo=False)   # folders created
    assert (tmp_path / "new" / "y.md").read_text() == "# quiet\n"
    assert "# quiet" not in capsys.readouterr().out
    write_report("# printed only\n", None)
    assert "# printed only" in capsys.readouterr().out
