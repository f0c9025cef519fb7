"""A model folder whose plans.json/dataset.json does not fit its checkpoint (issue 24): refused
before anything is created, one line naming the file at fault, exit 2; the API and load_model
raise flareseg's InputError, never a torch/nnU-Net error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tiny_model import tiny_plans, write_model_folder
from flareseg.cli import main
from flareseg.errors import InputError
from tests.bad_input import check_predict_row, tiny_ct


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_model_folder(tmp_path_factory.mktemp("models") / "m", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def five_labels(m: Path):
    _edit_json(m / "dataset.json", lambda d: d.update(labels=dict(list(d["labels"].items())[:5])))
    return "dataset.json", "predicts 15 classes, dataset.json lists 5 labels"


def twenty_labels(m: Path):
    _edit_json(m / "dataset.json", lambda d: d["labels"].update({f"extra{i}": 15 + i for i in range(5)}))
    return "dataset.json", "predicts 15 classes, dataset.json lists 20 labels"


def features_changed(m: Path):
    def edit(p):
        p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32]
    _edit_json(m / "plans.json", edit)
    return "checkpoint_final.pth", "features_per_stage"


def configuration_missing(m: Path):
    _edit_json(m / "plans.json", lambda p: p.update(configurations={"2d": p["configurations"]["3d_fullres"]}))
    return "plans.json", "has no configuration '3d_fullres'"


def wrong_architecture(m: Path):
    other = write_model_folder(m.parent / "other", plans=tiny_plans(convs_per_stage=2))
    shutil.copy(other / "fold_0" / "checkpoint_final.pth", m / "fold_0" / "checkpoint_final.pth")
    shutil.rmtree(other)
    return "checkpoint_final.pth", "another architecture"


def label_not_int(m: Path):
    _edit_json(m / "dataset.json", lambda d: d["labels"].update(liver="1"))
    return "dataset.json", "label 'liver' has value '1' (str)"


def arch_does_not_build(m: Path):
    def edit(p):
        p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8]
    _edit_json(m / "plans.json", edit)
    return "plans.json", "does not build a network"


def not_a_checkpoint(m: Path):
    import torch
    torch.save({"weights": {}}, m / "fold_0" / "checkpoint_final.pth")
    return "checkpoint_final.pth", "'network_weights' is missing"


ROWS = [five_labels, twenty_labels, features_changed, configuration_missing, wrong_architecture,
        label_not_int, arch_does_not_build, not_a_checkpoint]


@pytest.fixture
def broken(request, good, tmp_path):
    m = tmp_path / "model"
    shutil.copytree(good, m)
    fname, reason = request.param(m)
    return m, fname, reason


@pytest.mark.parametrize("broken", ROWS, ids=[r.__name__ for r in ROWS], indirect=True)
def test_predict_refuses_inconsistent_model_before_any_output(broken, tmp_path, capsys, caplog):
    m, fname, reason = broken
    ct = tiny_ct(tmp_path / "ct.nii.gz")
    out_dir = tmp_path / "out" / "labels"
    row = dict(inputs=[ct], rc=2, names=[fname], reason=reason)
    out = check_predict_row(main, row, ["-i", ct, "-o", out_dir, "-m", m], m, tmp_path, capsys, caplog)
    assert not (tmp_path / "out").exists()
    assert len([ln for ln in out.lines if ln.strip()]) == 1, out.lines


@pytest.mark.parametrize("broken", ROWS, ids=[r.__name__ for r in ROWS], indirect=True)
def test_api_and_loader_raise_input_error(broken, tmp_path):
    import flareseg
    from flareseg.nnunet.model import load_model
    m, fname, reason = broken
    ct = tiny_ct(tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match=reason.replace("(", r"\(").replace(")", r"\)")) as e:
        flareseg.predict(ct, m, tmp_path / "out", device="cpu")
    assert fname in str(e.value) and not (tmp_path / "out").exists()
    with pytest.raises(InputError, match=fname):
        load_model(m)


def test_consistent_folder_still_loads(good):
    from flareseg.nnunet.folder_check import check_model_folder
    from flareseg.nnunet.model import load_model
    assert check_model_folder(good) == good
    assert load_model(good).num_classes == 15
