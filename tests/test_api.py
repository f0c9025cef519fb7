"""Python API: flareseg.predict / evaluate / clean, one call each, the CLI's defaults and checks."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.cli import main
from flareseg.config import ConfigError
from flareseg.write_guard import UnsafeOutput
from flareseg.io import InputError
from tiny_model import tiny_plans, write_model_folder


def _ct(seed: int, shape=(12, 36, 36)) -> sitk.Image:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    arr = np.where(y ** 2 + x ** 2 < 0.7, 40, -1000) + rng.normal(0, 20, shape)
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing((3.0, 3.0, 4.0))
    return img


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)


@pytest.fixture()
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        sitk.WriteImage(_ct(i), str(d / f"case{i}_0000.nii.gz"))
    return d


def _md5(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_import_flareseg_stays_light():
    code = ("import sys, flareseg; assert callable(flareseg.__getattr__); "
            "print(sorted(m for m in ('torch', 'nnunetv2', 'SimpleITK') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_predict_in_memory_equals_the_cli(model, inputs, tmp_path):
    """One file, no output: the label map comes back and nothing is written; same labels as
    `flareseg predict` with the same flags (the CLI's defaults otherwise)."""
    from flareseg import predict
    before = _md5(inputs)
    img = predict(inputs / "case0_0000.nii.gz", model, device="cpu", skip_windows=False)
    assert isinstance(img, sitk.Image) and img.GetSize() == (36, 36, 12) and img.GetSpacing() == (3.0, 3.0, 4.0)
    assert _md5(inputs) == before and sorted(p.name for p in inputs.iterdir()) == sorted(before)
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "cli"), "-m", str(model), "-q",
                 "--device", "cpu", "--no-skip"]) == 0
    cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / "case0.nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(img), cli)
    both = predict(inputs, model, device="cpu", skip_windows=False)      # a folder: {case: image}
    assert sorted(both) == ["case0", "case1"] and np.array_equal(sitk.GetArrayFromImage(both["case0"]), cli)


def test_predict_writes_like_the_cli(model, inputs, tmp_path):
    from flareseg import predict
    one = predict(inputs / "case1_0000.nii.gz", model, tmp_path / "one.nii.gz", device="cpu")
    assert one == tmp_path / "one.nii.gz" and one.is_file()
    out = predict(inputs, model, tmp_path / "out", device="cpu", statistics=True)
    assert out == {"case0": tmp_path / "out" / "case0.nii.gz", "case1": tmp_path / "out" / "case1.nii.gz"}
    assert (tmp_path / "out" / "predict_report.json").is_file() and (tmp_path / "out" / "statistics.json").is_file()
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(one))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(out["case1"]))))


def test_predict_keeps_the_cli_safety_rules(model, inputs, tmp_path):
    from flareseg import predict
    before = _md5(inputs)
    with pytest.raises(UnsafeOutput, match="is the input folder"):
        predict(inputs, model, inputs, device="cpu")
    with pytest.raises(UnsafeOutput, match="would overwrite the input"):
        predict(inputs / "case0_0000.nii.gz", model, inputs / "case0_0000.nii.gz", device="cpu")
    with pytest.raises(InputError, match="not a model folder"):
        predict(inputs, tmp_path, tmp_path / "o", device="cpu")
    with pytest.raises(ConfigError, match="step_size"):
        predict(inputs, model, device="cpu", step_size=0)
    with pytest.raises(ConfigError, match="unknown key"):
        predict(inputs, model, device="cpu", skip=False)
    assert _md5(inputs) == before and not (tmp_path / "o").exists()


def test_evaluate_and_clean(model, inputs, tmp_path):
    from flareseg import clean, evaluate
    labels = tmp_path / "labels"
    labels.mkdir()
    ref = np.zeros((12, 36, 36), np.uint8)
    ref[3:9, 10:26, 10:26] = 1
    ref[0, 0, 0] = 2                                          # a one-voxel speck cleaning removes
    img = sitk.GetImageFromArray(ref)
    img.SetSpacing((3.0, 3.0, 4.0))
    sitk.WriteImage(img, str(labels / "case0.nii.gz"))
    before = _md5(labels)
    rep = clean(labels, tmp_path / "clean", min_voxels=5)
    assert len(rep.cases) == 1 and any(r.cls == 2 for r in rep.records)
    cleaned = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "clean" / "labels" / "case0.nii.gz")))
    assert cleaned[0, 0, 0] == 0 and (cleaned == 1).sum() == (ref == 1).sum() and _md5(labels) == before
    res = evaluate(tmp_path / "clean" / "labels", labels, classes=[1])
    assert res.ok and res.scores["case0"][1][0] == pytest.approx(1.0)
    with pytest.raises(UnsafeOutput, match=r"\(--out\) is the --gt folder"):
        evaluate(tmp_path / "clean" / "labels", labels, labels)
    with pytest.raises(ConfigError):
        clean(labels, tmp_path / "c2", min_voxels=-1)
