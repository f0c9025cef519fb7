"""docker/predict.sh (FLARE contract) run outside Docker with overridden paths."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tiny_model import write_model_folder

REPO = Path(__file__).resolve().parents[1]


def test_predict_sh_writes_one_label_map_per_input(tmp_path):
    model = write_model_folder(tmp_path / "model", seed=2)
    inp, out = tmp_path / "inputs", tmp_path / "outputs"
    inp.mkdir()
    for name in ("Case_00001_0000.nii.gz", "Case_00002_0000.nii.gz"):
        arr = np.full((16, 36, 36), -1000, dtype=np.int16)
        arr[:, 6:30, 6:30] = 50
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.4, 1.4, 2.5))
        sitk.WriteImage(img, str(inp / name))
    env = dict(os.environ, INPUT_DIR=str(inp), OUTPUT_DIR=str(out), MODEL_DIR=str(model),
               DEVICE="cpu", REPORT=str(tmp_path / "report.json"),
               FLARESEG=f"{sys.executable} -m flareseg.cli", PYTHONPATH=str(REPO))
    r = subprocess.run(["sh", str(REPO / "docker" / "predict.sh")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # the label maps, plus the write guard's hidden ledger (how a rerun recognises its own files)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["Case_00001.nii.gz", "Case_00002.nii.gz"]
    assert {p.name for p in out.iterdir() if p.name.startswith(".")} <= {".flareseg-written.jsonl"}
    assert (tmp_path / "report.json").is_file()
    lab = sitk.ReadImage(str(out / "Case_00001.nii.gz"))
    assert lab.GetSize() == (36, 36, 16) and np.allclose(lab.GetSpacing(), (1.4, 1.4, 2.5))


def test_predict_sh_missing_input_folder(tmp_path):
    model = write_model_folder(tmp_path / "model", seed=2)
    env = dict(os.environ, INPUT_DIR=str(tmp_path / "nope"), OUTPUT_DIR=str(tmp_path / "o"),
               MODEL_DIR=str(model), FLARESEG=f"{sys.executable} -m flareseg.cli", PYTHONPATH=str(REPO))
    r = subprocess.run(["sh", str(REPO / "docker" / "predict.sh")], env=env, capture_output=True, text=True,
                       timeout=300)
    # flareseg predict refuses before any work: exit 2, the folder and the reason, no output folder
    assert r.returncode == 2 and f"{tmp_path / 'nope'}: does not exist" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
