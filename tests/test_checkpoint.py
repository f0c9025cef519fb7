"""Checkpoints: safe loading (weights only + allow-list, --trust-model opt-in), atomic writes that
keep the previous good checkpoint, and training that resumes past a damaged checkpoint."""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from flareseg.config import TrainConfig
from flareseg.io import InputError
from flareseg.nnunet.checkpoint import (CorruptCheckpoint, UntrustedCheckpoint, load_checkpoint,
                                        write_checkpoint)
from tiny_model import tiny_plans, write_model_folder
from tiny import tiny_planned_dataset


# ---------------------------------------------------------------------------------------- loading
def _touch(path: str) -> str:
    """Harmless stand-in for malicious code: leaves a marker file when it runs."""
    Path(path).write_text("unpickled")
    return "payload"


class Payload:
    """Unpickling this object calls ``_touch`` (as an ``os.system`` payload would call a shell)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _plant_payload(model_dir: Path, marker: Path) -> Path:
    path = model_dir / "fold_0" / "checkpoint_final.pth"
    ck = torch.load(path, weights_only=True)
    ck["extra"] = Payload(marker)
    torch.save(ck, path)
    return path


def test_model_folder_checkpoint_loads_weights_only(tmp_path):
    mdir = write_model_folder(tmp_path / "m")
    ck = load_checkpoint(mdir / "fold_0" / "checkpoint_final.pth")
    assert set(ck) >= {"network_weights", "init_args", "trainer_name"}
    assert all(isinstance(v, torch.Tensor) for v in ck["network_weights"].values())
    from flareseg.nnunet.model import load_model
    assert load_model(mdir).folds == ["0"]


def test_checkpoint_with_pickled_code_is_refused_naming_type_and_flag(tmp_path):
    from flareseg.inference.predictor import FastPredictor
    from flareseg.nnunet.model import load_model

    mdir = write_model_folder(tmp_path / "m")
    marker = tmp_path / "marker"
    path = _plant_payload(mdir, marker)
    before = path.read_bytes()
    with pytest.raises(UntrustedCheckpoint) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: untrusted checkpoint: needs ") and "_touch" in msg
    assert "--trust-model" in msg and "\n" not in msg
    with pytest.raises(InputError, match="untrusted checkpoint"):
        load_model(mdir)
    with pytest.raises(InputError, match="untrusted checkpoint"):
        FastPredictor(mdir, device="cpu")
    assert not marker.exists(), "the checkpoint's code ran"
    assert path.read_bytes() == before
    # the documented opt-in loads it (and, as documented, runs what it holds)
    m = FastPredictor(mdir, device="cpu", trust_model=True).model
    assert m.folds == ["0"] and marker.read_text() == "unpickled"


@pytest.mark.parametrize("obj,needs", [
    (np.array(["a", 1], dtype=object), "numpy.dtypes.ObjectDType"),
    (np.array(["ab"]), "numpy.dtypes.StrDType"),
    (os.getcwd, "posix.getcwd"),
    (Path("x"), "pathlib"),
    (argparse.Namespace(a=1), "argparse.Namespace"),
])
def test_anything_beyond_numbers_and_tensors_is_refused(tmp_path, obj, needs):
    torch.save({"network_weights": {"w": torch.ones(2)}, "x": obj}, tmp_path / "c.pth")
    with pytest.raises(UntrustedCheckpoint, match=needs):
        load_checkpoint(tmp_path / "c.pth")


def test_checkpoints_written_with_numpy_1_load(tmp_path):
    """Released nnU-Net checkpoints were pickled under numpy 1, whose module is numpy.core."""
    import zipfile
    torch.save({"logging": {"ema_fg_dice": [np.float32(0.5)]}, "w": torch.ones(3),
                "numpy": np.arange(3, dtype=np.uint32)}, tmp_path / "np2.pth")
    with zipfile.ZipFile(tmp_path / "np2.pth") as zin, \
            zipfile.ZipFile(tmp_path / "np1.pth", "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\n" in data
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            zout.writestr(info, data)
    ck = load_checkpoint(tmp_path / "np1.pth")
    assert ck["logging"]["ema_fg_dice"] == [np.float32(0.5)] and ck["numpy"].tolist() == [0, 1, 2]


def _ct(path: Path) -> None:
    arr = np.full((16, 40, 36), -1000, dtype=np.int16)
    arr[:, 8:32, 6:30] = 60
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 2.5))
    sitk.WriteImage(img, str(path))


def test_predict_trust_model_flag(tmp_path, capsys, caplog):
    from flareseg.cli import main

    mdir = write_model_folder(tmp_path / "m", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)))
    marker = tmp_path / "marker"
    _plant_payload(mdir, marker)
    _ct(tmp_path / "scan.nii.gz")
    argv = ["predict", "-i", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "out"), "-m", str(mdir),
            "--device", "cpu", "-q"]
    caplog.clear()
    try:                      # the predict command turns model-folder errors into exit 2 + one line
        rc = main(argv)
        shown = capsys.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)
    except InputError as e:
        rc, shown = 2, str(e)
    assert rc == 2 and "untrusted checkpoint" in shown and "--trust-model" in shown
    assert not marker.exists() and not (tmp_path / "out" / "scan.nii.gz").exists()
    assert main(argv + ["--trust-model"]) == 0
    assert (tmp_path / "out" / "scan.nii.gz").exists() and marker.exists()


@pytest.mark.parametrize("damage,reason", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b"", "empty file"),
    (lambda b: b"\x80\x02not a checkpoint at all", "corrupt checkpoint"),
])
def test_damaged_checkpoint_is_a_corrupt_checkpoint_error(tmp_path, damage, reason):
    path = write_model_folder(tmp_path / "m") / "fold_0" / "checkpoint_final.pth"
    path.write_bytes(damage(path.read_bytes()))
    for trusted in (False, True):
        with pytest.raises(CorruptCheckpoint) as e:
            load_checkpoint(path, trusted=trusted)
        assert str(e.value).startswith(f"{path}: corrupt checkpoint (") and reason in str(e.value)
        assert isinstance(e.value, InputError) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------- writing
def test_checkpoint_write_is_atomic_and_keeps_the_previous_pair(tmp_path):
    latest = tmp_path / "checkpoint_latest.pth"

    def saver(obj):
        return lambda tmp: torch.save(obj, tmp)

    write_checkpoint(latest, saver({"current_epoch": 1}), {"epoch": 1}, keep_previous=True)
    write_checkpoint(latest, saver({"current_epoch": 2}), {"epoch": 2}, keep_previous=True)
    assert load_checkpoint(latest)["current_epoch"] == 2
    assert load_checkpoint(tmp_path / "checkpoint_latest.pth.rng")["epoch"] == 2
    assert load_checkpoint(tmp_path / "checkpoint_previous.pth")["current_epoch"] == 1
    assert load_checkpoint(tmp_path / "checkpoint_previous.pth.rng")["epoch"] == 1

    def killed(tmp):   # the process dies half-way through writing the next checkpoint
        Path(tmp).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(latest, killed, {"epoch": 3}, keep_previous=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # nothing replaced or left


# ---------------------------------------------------------------------------------------- resume decision
def _pair(folder: Path, name: str, epoch: int, rng_epoch: int | None = None) -> None:
    torch.save({"current_epoch": epoch}, folder / name)
    if rng_epoch is not None:
        torch.save({"epoch": rng_epoch}, folder / f"{name}.rng")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


@pytest.mark.parametrize("setup,expect,warned,says", [
    # latest pair good: resume from it, no warning
    (lambda d: (_pair(d, "checkpoint_latest.pth", 4, 4), _pair(d, "checkpoint_previous.pth", 3, 3)),
     "checkpoint_latest.pth", [], ""),
    # latest checkpoint truncated: previous pair
    (lambda d: (_pair(d, "checkpoint_latest.pth", 4, 4), _pair(d, "checkpoint_previous.pth", 3, 3),
                _truncate(d / "checkpoint_latest.pth")),
     "checkpoint_previous.pth", ["checkpoint_latest.pth"], "resuming from checkpoint_previous.pth (epoch 3)"),
    # latest random state truncated: previous pair (exact); the latest pair is set aside as a whole
    (lambda d: (_pair(d, "checkpoint_latest.pth", 4, 4), _pair(d, "checkpoint_previous.pth", 3, 3),
                _truncate(d / "checkpoint_latest.pth.rng")),
     "checkpoint_previous.pth", ["checkpoint_latest.pth.rng", "checkpoint_latest.pth"],
     "resuming from checkpoint_previous.pth (epoch 3)"),
    # random state truncated and no previous: the weights without it
    (lambda d: (_pair(d, "checkpoint_latest.pth", 4, 4), _truncate(d / "checkpoint_latest.pth.rng")),
     "checkpoint_latest.pth", ["checkpoint_latest.pth.rng"], "without its random state"),
    # both checkpoints damaged: from scratch
    (lambda d: (_pair(d, "checkpoint_latest.pth", 4, 4), _pair(d, "checkpoint_previous.pth", 3, 3),
                _truncate(d / "checkpoint_latest.pth"), _truncate(d / "checkpoint_previous.pth")),
     None, ["checkpoint_latest.pth", "checkpoint_previous.pth"], "from scratch"),
    # damaged final checkpoint: the step runs again
    (lambda d: (_pair(d, "checkpoint_final.pth", 5, 5), _truncate(d / "checkpoint_final.pth")),
     None, ["checkpoint_final.pth"], "from scratch"),
    # good final checkpoint: nothing to resume
    (lambda d: _pair(d, "checkpoint_final.pth", 5, 5), None, [], ""),
])
def test_resume_point_falls_back_past_damaged_files(tmp_path, caplog, setup, expect, warned, says):
    from flareseg.nnunet.training import resume_point
    setup(tmp_path)
    with caplog.at_level(logging.WARNING, logger="flareseg.nnunet.training"):
        got = resume_point(tmp_path)
    assert (got.name if got else None) == expect
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == len(warned), lines
    for name, line in zip(warned, lines):
        assert line.startswith(str(tmp_path / name) + ": ") and says in line and "\n" not in line
        assert f"moved to {name}.damaged" in line
        assert (tmp_path / f"{name}.damaged").exists() and not (tmp_path / name).exists()


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny_plans_dir(tmp_path_factory):
    return tiny_planned_dataset(tmp_path_factory.mktemp("ckpt"))[0]


class _Killed(Exception):
    pass


_TC = TrainConfig(epochs=3, iterations_per_epoch=1, val_iterations=1, num_workers=0, device="cpu",
                  save_every=1, seed=3)
_FOLD = Path("Dataset901_Tiny") / "FlareSegTrainer__nnUNetPlans__fine" / "fold_0"


def _train(paths, results: Path) -> dict:
    from flareseg.nnunet.env import NNUNetPaths
    from flareseg.nnunet.training import train
    NNUNetPaths(paths.raw, paths.preprocessed, results).export()   # nnU-Net writes under nnUNet_results
    return train("Dataset901_Tiny", "fine", _TC, paths.preprocessed, results)


def _weights(results: Path) -> dict:
    return load_checkpoint(results / _FOLD / "checkpoint_final.pth")["network_weights"]


def test_training_resumes_past_a_damaged_latest_checkpoint(tiny_plans_dir, tmp_path, monkeypatch, caplog):
    """A run stopped after epoch 2 whose checkpoint_latest.pth (or its .rng) is then truncated
    resumes from checkpoint_previous.pth and ends with the weights of an uninterrupted run."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger
    from flareseg.nnunet.trainer import FlareSegTrainer

    paths = tiny_plans_dir
    # train() and export() set these process-wide: restore them after the test (unset ones unset)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer",
                "nnUNet_n_proc_DA", "nnUNet_compile"):
        old = os.environ.get(var)
        monkeypatch.setenv(var, old or "")
        if old is None:
            monkeypatch.delenv(var)
    monkeypatch.setattr(MetaLogger, "plot_progress_png", lambda self, folder: None)  # test speed only
    ref = _train(paths, tmp_path / "ref")
    assert sorted(p.name for p in (tmp_path / "ref" / _FOLD).glob("checkpoint_*")) == [
        "checkpoint_best.pth", "checkpoint_best.pth.rng", "checkpoint_final.pth", "checkpoint_final.pth.rng"]

    original = FlareSegTrainer.on_epoch_end

    def stop_after_epoch_2(self):   # the kill: after epoch 2's checkpoint is on disk
        original(self)
        if self.current_epoch == 2:
            raise _Killed

    with monkeypatch.context() as m, pytest.raises(_Killed):
        m.setattr(FlareSegTrainer, "on_epoch_end", stop_after_epoch_2)
        _train(paths, tmp_path / "killed")
    fold = tmp_path / "killed" / _FOLD
    assert load_checkpoint(fold / "checkpoint_latest.pth")["current_epoch"] == 2
    assert load_checkpoint(fold / "checkpoint_previous.pth")["current_epoch"] == 1
    assert not list(fold.glob(".*tmp*"))

    for damaged in ("checkpoint_latest.pth", "checkpoint_latest.pth.rng"):
        res = tmp_path / damaged
        shutil.copytree(tmp_path / "killed", res)
        _truncate(res / _FOLD / damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="flareseg.nnunet.training"):
            summary = _train(paths, res)
        warnings = [r.getMessage() for r in caplog.records
                    if r.levelno == logging.WARNING and r.name == "flareseg.nnunet.training"]
        assert any(w.startswith(f"{res / _FOLD / damaged}: corrupt checkpoint (truncated")
                   and "resuming from checkpoint_previous.pth (epoch 1)" in w for w in warnings), warnings
        assert summary["epochs"] == ref["epochs"] == 3
        wa, wb = _weights(tmp_path / "ref"), _weights(res)
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
        left = sorted(p.name for p in (res / _FOLD).iterdir() if p.name.startswith(("checkpoint_", ".")))
        assert "checkpoint_latest.pth" not in left and "checkpoint_previous.pth" not in left
        assert f"{damaged}.damaged" in left and not [n for n in left if ".tmp" in n]
