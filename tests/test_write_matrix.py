"""The generated write matrix (issue 24): hypothesis builds layouts -- the output folder equal to,
inside, above, beside or a symlink of an input folder; an output file that already exists as a
symlink or hard link to an input, as a foreign file, or a foreign file beside the outputs -- for
every writing command (predict, import, clean, evaluate, export-model, efficiency) and the Python
API, with and without ``--overwrite``, and asserts the write guard's contract:

* every pre-existing byte of the inputs is unchanged (md5 tree), and so is a foreign file
  unless ``--overwrite`` was given;
* no temporary or partial file remains anywhere;
* the exit code is 0 or 2, and a refusal is exactly one error line (the API raises instead);
* an output folder that is or aliases an input folder, and a foreign file without
  ``--overwrite``, are always refused.

Fixed seed (``derandomize=True``: hypothesis derives the examples from the test's source, the same
on every run) and :data:`EXAMPLES` examples per command; docs/reliability.md records both.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bad_input import leftovers, md5_tree, run_command, tiny_ct
from tiny_model import tiny_plans, write_model_folder
from flareseg.cli import main
from flareseg.write_guard import UnsafeOutput

#: examples per command (7 commands: about 100 s on 2 cores)
EXAMPLES = 30
RELATIONS = ("equal", "inside", "above", "beside", "alias", "symlink_file", "hardlink_file", "foreign_file",
             "foreign_beside")
MATRIX = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: command -> (its input folders, by name; output names it writes, relative to its output folder)
COMMANDS = {
    "predict": (("in", "model"), ("a.nii.gz", "b.nii.gz", "predict_report.json")),
    "api-predict": (("in", "model"), ("a.nii.gz", "predict_report.json")),
    "import": (("images", "labels"), ("imagesTr/c1_0000.nii.gz", "labelsTr/c1.nii.gz", "dataset.json")),
    "clean": (("labels", "images"), ("labels/c1.nii.gz", "cleaning_report.csv", "cases/c1.json")),
    "evaluate": (("pred", "labels"), ("summary.json", "per_case.csv")),
    "export-model": (("model",), ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth")),
    "efficiency": (("in",), ("efficiency.csv", "logs/a.log", "outputs/a.nii.gz")),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)


def _label(path: Path) -> None:
    arr = np.zeros((16, 40, 36), np.uint8)
    arr[4:10, 10:20, 10:20] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 2.5))
    sitk.WriteImage(img, str(path))


def _inputs(w: Path, model: Path) -> dict[str, Path]:
    """Every input folder of every command under ``w``."""
    d = {n: w / n for n in ("in", "images", "labels", "pred")}
    for p in d.values():
        p.mkdir()
    tiny_ct(d["in"] / "a.nii.gz")
    tiny_ct(d["in"] / "b_0000.nii.gz")
    for c in ("c1", "c2"):
        tiny_ct(d["images"] / f"{c}_0000.nii.gz")
        _label(d["labels"] / f"{c}.nii.gz")
        _label(d["pred"] / f"{c}.nii.gz")
    d["model"] = Path(shutil.copytree(model, w / "model"))
    return d


def _layout(w: Path, inputs: dict[str, Path], target: str, relation: str, name: str) -> tuple[Path, Path | None]:
    """The output folder for ``relation`` to the input folder ``target`` and the pre-existing file
    planted at output ``name`` (None: nothing planted)."""
    src = inputs[target]
    planted = None
    if relation == "equal":
        return src, None
    if relation == "inside":
        return src / "sub", None
    if relation == "above":
        return w, None
    if relation == "alias":
        (w / "alias").symlink_to(src, target_is_directory=True)
        return w / "alias", None
    out = w / "out"
    out.mkdir()
    some_input = next(p for p in sorted(src.rglob("*")) if p.is_file())
    if relation == "foreign_beside":
        (out / "notes.txt").write_text("the user's notes\n")
    elif relation != "beside":
        planted = out / name
        planted.parent.mkdir(parents=True, exist_ok=True)
        if relation == "symlink_file":
            planted.symlink_to(some_input)
        elif relation == "hardlink_file":
            os.link(some_input, planted)
        elif relation == "foreign_file":
            planted.write_bytes(b"the user's own file\n")
    return out, planted


def _argv(cmd: str, inputs: dict[str, Path], out: Path, overwrite: bool) -> list[str]:
    argv = {"predict": ["predict", "-i", inputs["in"], "-o", out, "-m", inputs["model"], "--device", "cpu", "-q"],
            "import": ["import", "--images", inputs["images"], "--labels", inputs["labels"], "--out", out],
            "clean": ["clean", "--labels", inputs["labels"], "--images", inputs["images"], "--out", out],
            "evaluate": ["evaluate", "--pred", inputs["pred"], "--gt", inputs["labels"], "--out", out],
            "export-model": ["export-model", "-m", inputs["model"], "-o", out],
            "efficiency": ["efficiency", "--inputs", inputs["in"], "--out", out]}[cmd]
    argv = list(map(str, argv)) + (["--overwrite"] if overwrite and cmd != "import" else [])
    # efficiency times a command that writes each case's {output} (a stand-in for a predictor)
    return argv + (["--", "cp", "{input}", "{output}"] if cmd == "efficiency" else [])


def _api(inputs: dict[str, Path], out: Path, overwrite: bool) -> int:
    import flareseg
    try:
        flareseg.predict(inputs["in"], inputs["model"], out, device="cpu", overwrite=overwrite)
    except UnsafeOutput:
        return 2
    return 0


def _errors(res) -> list[str]:
    logged = [r.getMessage() for r in res.records if r.levelno >= logging.ERROR]
    return logged + [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]


def _check(cmd: str, model: Path, capsys, caplog, data) -> None:
    folders, names = COMMANDS[cmd]
    target = data.draw(st.sampled_from(folders), label="input folder")
    relation = data.draw(st.sampled_from(RELATIONS), label="relation")
    name = data.draw(st.sampled_from(names), label="output name")
    overwrite = data.draw(st.booleans(), label="overwrite")
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp).resolve()
        inputs = _inputs(w, model)
        out, planted = _layout(w, inputs, target, relation, name)
        before = md5_tree(inputs.values())
        foreign = md5_tree([planted]) if relation == "foreign_file" else {}
        beside = md5_tree([w / "out" / "notes.txt"]) if relation == "foreign_beside" else {}
        if cmd == "api-predict":
            rc = _api(inputs, out, overwrite)
        else:
            res = run_command(main, _argv(cmd, inputs, out, overwrite), capsys, caplog)
            rc = res.rc
            assert "Traceback" not in res.stderr + res.stdout
            if rc == 2:
                assert len(_errors(res)) == 1, res.lines
        where = f"{cmd} {relation} {target} {name} overwrite={overwrite}"
        assert rc in (0, 2), where
        event(f"exit {rc}")
        after = md5_tree(inputs.values())   # new files may appear (-o inside an input folder), no byte changes
        assert {k: after.get(k) for k in before} == before, f"{where}: an input changed"
        assert leftovers([w]) == [], f"{where}: temporary files left"
        if foreign and (not overwrite or cmd == "import"):
            assert md5_tree([planted]) == foreign, f"{where}: a foreign file was replaced"
        if beside:
            assert md5_tree([w / "out" / "notes.txt"]) == beside, f"{where}: a foreign file changed"
        if relation in ("equal", "alias") or (relation == "foreign_file" and not overwrite):
            assert rc == 2, f"{where}: not refused"


@pytest.mark.parametrize("cmd", list(COMMANDS))
@MATRIX
@given(data=st.data())
def test_generated_layouts_never_touch_a_pre_existing_byte(cmd, model, capsys, caplog, data):
    _check(cmd, model, capsys, caplog, data)
