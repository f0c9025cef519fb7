"""`flareseg export-model`: a model folder stock nnU-Net loads with no nnUNet_extTrainer, giving the
labels `flareseg predict --image-resampling nnunet --no-skip` gives."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from flareseg.cli import main
from flareseg.inference.predictor import FastPredictor
from flareseg.nnunet.checkpoint import load_checkpoint
from flareseg.nnunet.export import MARKER, export_model
from tiny_model import tiny_plans, write_model_folder
from test_predictor import _LogitRange, phantom_ct, stock_determined, stock_predict

LABELS = {0: "background", 1: "liver", 2: "kidney", 3: "tumor"}


@pytest.fixture(scope="module")
def flare_model(tmp_path_factory):
    """A model folder whose checkpoints name FlareSegTrainer (what stages 1 and 5 ship)."""
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                              labels=LABELS, seed=1, trainer_name="FlareSegTrainer")


def _md5s(folder):
    return {p.relative_to(folder): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_stock_loads_export_without_env_and_labels_match_predict(flare_model, tmp_path, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    before = _md5s(flare_model)
    # the shipped folder itself: stock cannot find FlareSegTrainer without the variable
    with pytest.raises(RuntimeError, match="FlareSegTrainer"):
        nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False).initialize_from_trained_model_folder(
            str(flare_model), use_folds=(0,))

    out = tmp_path / "stock"
    assert main(["export-model", "-m", str(flare_model), "-o", str(out)]) == 0
    assert _md5s(flare_model) == before                       # the model folder is read only
    ck = load_checkpoint(out / "fold_0" / "checkpoint_final.pth")
    assert ck["trainer_name"] == "nnUNetTrainer" and ck["exported_from"]["trainer_name"] == "FlareSegTrainer"
    assert ck["inference_allowed_mirroring_axes"] == (0, 1, 2) and "optimizer_state" not in ck
    pred = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(out), use_folds=(0,))   # no env var needed
    assert pred.trainer_name == "nnUNetTrainer" and pred.allowed_mirroring_axes == (0, 1, 2)

    # same labels as flareseg predict --image-resampling nnunet --no-skip (on the original folder)
    img = phantom_ct(shape=(16, 44, 48), spacing_zyx=(4.0, 2.6, 2.2), seed=2)   # >= a patch at 3 mm
    src = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(img, str(src))
    assert main(["predict", "-i", str(src), "-o", str(tmp_path / "pred"), "-m", str(flare_model), "-q",
                 "--device", "cpu", "--image-resampling", "nnunet", "--no-skip"]) == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / "case.nii.gz")))
    ref, stock_probs = stock_predict(out, img, probabilities=True)
    fp = FastPredictor(flare_model, device="cpu", skip_windows=False, image_resampling="nnunet")
    fp.networks = [_LogitRange(n) for n in fp.networks]
    assert np.array_equal(sitk.GetArrayFromImage(fp.predict(img)), ours)   # the CLI's labels
    decided = stock_determined(fp, img, stock_probs, max(n.largest for n in fp.networks))
    assert decided.mean() > 0.3, decided.mean()   # random weights: many near-ties stock float16 decides
    wrong = decided & (ours != ref)
    assert not wrong.any(), int(wrong.sum())
    assert (ours == ref).mean() > 0.9, (ours == ref).mean()


def test_reexport_replaces_an_earlier_export(flare_model, tmp_path):
    out = tmp_path / "stock"
    export_model(flare_model, out)
    (out / "fold_0" / "stale.txt").write_text("x")       # not export's: kept (delete only what it wrote)
    before = (out / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns
    export_model(flare_model, out)
    assert (out / MARKER).is_file() and (out / "fold_0" / "stale.txt").read_text() == "x"
    assert (out / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns != before        # replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]    # no temp folders left
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".flareseg-written.jsonl"]


def test_copied_export_is_replaced_only_with_overwrite(flare_model, tmp_path):
    """A copied export (its ledger's file stamps no longer match) is not recognised as an earlier
    export: refused, and with overwrite (what stage-6 passes inside its own, already checked stage
    folder) replaced, files export did not write kept."""
    import shutil
    from flareseg.write_guard import UnsafeOutput
    first = tmp_path / "first"
    export_model(flare_model, first)
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)          # new inodes and times: the ledger no longer vouches for them
    (copy / "notes.txt").write_text("mine")
    before = _md5s(copy)
    with pytest.raises(UnsafeOutput):
        export_model(flare_model, copy)
    assert _md5s(copy) == before           # refused before anything was written
    export_model(flare_model, copy, overwrite=True)
    assert (copy / "notes.txt").read_text() == "mine" and (copy / MARKER).is_file()
