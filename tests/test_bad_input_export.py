"""Bad-input matrix rows for `flareseg export-model` (issue 14 contract, tests/bad_input.py)."""
from __future__ import annotations

import pytest

from bad_input import check_contract, md5_tree, run_command
from flareseg.cli import main
from tiny_model import tiny_plans, write_model_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                              seed=1, trainer_name="FlareSegTrainer")


@pytest.mark.parametrize("where, why", [
    ("same", "is the model folder"),               # -o == -m
    ("inside", "inside the model folder"),         # -o inside -m
    ("file", "not a folder"),                      # -o an existing file
    ("foreign", "not an earlier export"),          # -o a non-empty folder of something else
])
def test_export_refuses_bad_destination(model, tmp_path, capsys, caplog, where, why):
    dest = {"same": model, "inside": model / "stock", "file": tmp_path / "f.txt",
            "foreign": tmp_path / "data"}[where]
    if where == "file":
        dest.write_text("keep")
    if where == "foreign":
        dest.mkdir()
        (dest / "notes.txt").write_text("keep")
    inputs = [model] + ([dest] if where in ("file", "foreign") else [])
    before = md5_tree(inputs)
    res = run_command(main, ["export-model", "-m", str(model), "-o", str(dest)], capsys, caplog)
    check_contract(res, rc=2, names=[str(dest)], reason=why, inputs_before=before, inputs=inputs,
                   outputs=[tmp_path])
    assert not (model / "stock").exists()


@pytest.mark.parametrize("what, why", [
    ("empty", "not a model folder"),               # a folder without plans/dataset/checkpoints
    ("corrupt", "corrupt checkpoint"),             # a truncated checkpoint
])
def test_export_refuses_bad_model(model, tmp_path, capsys, caplog, what, why):
    import shutil
    m = tmp_path / "m"
    if what == "empty":
        m.mkdir()
        names = [str(m)]
    else:
        shutil.copytree(model, m)
        ck = m / "fold_0" / "checkpoint_final.pth"
        ck.write_bytes(ck.read_bytes()[:2000])
        names = [str(ck)]
    before = md5_tree([m])
    res = run_command(main, ["export-model", "-m", str(m), "-o", str(tmp_path / "o")], capsys, caplog)
    check_contract(res, rc=2, names=names, reason=why, inputs_before=before, inputs=[m], outputs=[tmp_path])
    assert not (tmp_path / "o").exists()
