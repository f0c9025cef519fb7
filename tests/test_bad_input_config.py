"""Bad-input matrix, config and pipeline runner: every row fails at config load or in the runner's
checks before any stage work (no training), with the documented exit code and one line naming
the key or path and the reason (see tests/bad_input.py for the contract)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from bad_input import check_contract, md5_tree, run_command
from flareseg.pipeline.__main__ import main as pipeline_main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def stage_script(n: int):
    """``stages/stage_N.py`` run as a script (the thing `make stage-N` runs)."""
    def main(argv):
        old = sys.argv
        sys.argv = [f"stages/stage_{n}.py", *argv]
        try:
            runpy.run_path(str(REPO / "stages" / f"stage_{n}.py"), run_name="__main__")
        finally:
            sys.argv = old
        return 0
    return main


# (id, stage, extra argv (W = the tmp work folder, T = tmp_path), exit code, names, reason)
ROWS = [
    ("epochs-negative", "1", ["--set", "train_fine.epochs=-3"], 2,
     ["train_fine.epochs", "-3", "--set"], "out of range (expected >= 1)"),
    ("spacing-zero", "1", ["--set", "fine.spacing=[0,0,0]"], 2,
     ["fine.spacing", "[0.0, 0.0, 0.0]"], "out of range (expected every element in (0, 50])"),
    ("iterations-zero", "1", ["--set", "train_fine.iterations_per_epoch=0"], 2,
     ["train_fine.iterations_per_epoch", "= 0"], "out of range"),
    ("probability-above-one", "5", ["--set", "cutmix.probability=1.5"], 2,
     ["cutmix.probability", "1.5"], "expected in [0, 1]"),
    ("margins-reversed", "3", ["--set", "cto.margin_xy=[32,24]"], 2,
     ["cto.margin_xy", "[32, 24]"], "lo <= hi"),
    ("clean-min-voxels-negative", "4", ["--set", "cleaning.min_voxels=-5"], 2,
     ["cleaning.min_voxels", "-5"], "out of range (expected >= 0)"),
    ("features-base-above-max", "1", ["--set", "fine.features_base=128"], 2,
     ["fine.features_base", "128", str(DEMO)], "expected <= fine.features_max"),
    ("epochs-string", "1", ["--set", "train_fine.epochs=abc"], 2,
     ["train_fine.epochs", "'abc'"], "expects an integer"),
    ("spacing-two-values", "1", ["--set", "fine.spacing=[1,2]"], 2,
     ["fine.spacing"], "expects a list of 3 values"),
    ("unknown-key", "2", ["--set", "pseudolabel.k_organs=5"], 2,
     ["pseudolabel.k_organs"], "unknown key"),
    ("override-without-value", "2", ["--set", "pseudolabel.k_organ"], 2,
     ["--set", "pseudolabel.k_organ"], "expected key=value"),
    ("config-is-a-folder", "1", ["--config", "T"], 2, ["T"], "is a folder, not a YAML file"),
    ("config-missing", "1", ["--config", "T/nope.yaml"], 2, ["T/nope.yaml"], "does not exist"),
    ("data-folder-missing", "1", ["--set", "data.source=folders", "--set", "data.labeled_images=T/nope",
                                  "--set", "data.labels=T/nope"], 3,
     ["T/nope", "data.labeled_images"], "data folder does not exist"),
    ("data-folder-unset", "1", ["--set", "data.source=folders"], 2,
     ["data.labeled_images", str(DEMO)], "must be set"),
    ("earlier-stage-missing", "3", [], 3, ["stage-3", "stage-1", "W"], "has not finished"),
    ("unknown-stage", "7", [], 2, ["'7'"], "unknown stage"),
    ("work-is-a-file", "2", ["--work", "T/file"], 2, ["T/file"], "is a file, not a folder"),
]


def _sub(v: str, tmp_path: Path, work: Path) -> str:
    """Placeholders: ``W`` the work folder, ``T`` / ``T/...`` / ``key=T/...`` the test's tmp folder."""
    if v == "W":
        return str(work)
    if v == "T" or v.startswith("T/"):
        return str(tmp_path) + v[1:]
    return v.replace("=T/", f"={tmp_path}/")


# the stage scripts exist for stages 1-6 only; other "stages" are rows of the module runner alone
CASES = [(row, runner) for row in ROWS for runner in ("module", "script")
         if runner == "module" or (row[1].isdigit() and 1 <= int(row[1]) <= 6)]


@pytest.mark.parametrize("row,runner", CASES, ids=[f"{r[0]}-{m}" for r, m in CASES])
def test_pipeline_bad_input(row, runner, tmp_path, capsys, caplog):
    _, stage, extra, rc, names, reason = row
    work = tmp_path / "work"
    (tmp_path / "file").write_text("not a folder\n")
    extra = [_sub(a, tmp_path, work) for a in extra]
    argv = ["--config", str(DEMO), "--work", str(work)] + extra
    inputs = [DEMO, tmp_path / "file"]
    before = md5_tree(inputs)
    if runner == "script":
        out = run_command(stage_script(int(stage)), argv, capsys, caplog)
    else:
        out = run_command(pipeline_main, [stage] + argv, capsys, caplog)
    check_contract(out, rc=rc, names=[_sub(n, tmp_path, work) for n in names], reason=reason,
                   inputs_before=before, inputs=inputs, outputs=[tmp_path])
    assert not work.exists(), "the runner started work although the input was bad"
    assert len([ln for ln in out.lines if ln.strip()]) == 1, out.lines


def test_config_file_out_of_range_names_file_key_value_range(tmp_path, capsys, caplog):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("train_fine:\n  epochs: -3\n")
    before = md5_tree([cfg])
    out = run_command(pipeline_main, ["1", "--config", cfg, "--work", tmp_path / "w"], capsys, caplog)
    check_contract(out, rc=2, names=[str(cfg), "train_fine.epochs", "-3"], reason="expected >= 1",
                   inputs_before=before, inputs=[cfg], outputs=[tmp_path])


def test_stage1_refused_import_is_one_line_exit_3(tmp_path, capsys, caplog):
    """A data folder whose manifest is unusable stops stage-1 at the import, naming manifest:line."""
    from tiny import write_tiny_raw

    raw = write_tiny_raw(tmp_path / "raw", n_unlabeled=0)
    manifest = raw / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("t04,1", "t04,liver"))
    before = md5_tree([raw])
    out = run_command(pipeline_main, [
        "1", "--config", DEMO, "--work", tmp_path / "work",
        "--set", "data.source=folders", "--set", f"data.labeled_images={raw / 'imagesTr'}",
        "--set", f"data.labels={raw / 'labelsTr'}", "--set", f"data.manifest={manifest}"],
        capsys, caplog)
    line = next((ln for ln in out.lines if "manifest.csv:" in ln), None)
    check_contract(out, rc=3, names=[f"{manifest}:"], reason="import refused",
                   inputs_before=before, inputs=[raw], outputs=[tmp_path / "work"])
    assert line is not None and "liver" in line
