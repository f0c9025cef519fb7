"""flareseg.predict in memory: a SimpleITK image or a numpy array + geometry in, the label map and
statistics out without files; series=; flareseg's errors for what it cannot take; OpenMP at import."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.cli import main
from flareseg.config import ConfigError
from flareseg.io import InputError
from tiny_model import tiny_plans, write_model_folder
from tests.test_read_dicom import ART, VEN, write_series

DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)   # a permuted, flipped axis order


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """A small CT (a body-like ellipse with a denser blob) written to a file; returns (path, image)."""
    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (10, 32, 30)], indexing="ij")
    arr = np.where(y ** 2 + x ** 2 < 0.7, 40, -1000) + np.where(y ** 2 + (x - 0.2) ** 2 < 0.05, 150, 0)
    img = sitk.GetImageFromArray((arr + rng.normal(0, 15, arr.shape)).astype(np.int16))
    img.SetSpacing((2.5, 2.0, 4.0))
    img.SetOrigin((-30.0, 12.5, 100.0))
    img.SetDirection(DIRECTION)
    path = tmp_path_factory.mktemp("ct") / "scan_0000.nii.gz"
    sitk.WriteImage(img, str(path))
    return path, sitk.ReadImage(str(path))


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def test_image_and_array_give_the_file_inputs_labels_on_its_grid(model, ct, tmp_path, monkeypatch):
    from flareseg import predict
    path, img = ct
    monkeypatch.chdir(tmp_path)
    from_file = predict(path, model, device="cpu")
    from_image = predict(img, model, device="cpu")
    arr = sitk.GetArrayFromImage(img)
    from_array = predict(arr, model, device="cpu", spacing=img.GetSpacing(), origin=img.GetOrigin(),
                         direction=img.GetDirection())
    for out in (from_image, from_array):
        assert isinstance(out, sitk.Image) and np.array_equal(_arr(out), _arr(from_file))
        assert out.GetSize() == img.GetSize() and out.GetSpacing() == pytest.approx(img.GetSpacing())
        assert out.GetOrigin() == pytest.approx(img.GetOrigin())
        assert out.GetDirection() == pytest.approx(DIRECTION)
    nested = predict(arr.astype(np.float32), model, device="cpu", spacing=list(img.GetSpacing()),
                     origin=img.GetOrigin(), direction=np.reshape(DIRECTION, (3, 3)))   # a 3x3 direction
    assert np.array_equal(_arr(nested), _arr(from_file))
    plain = predict(arr, model, device="cpu", spacing=(2.5, 2.0, 4.0))   # origin 0, identity direction
    assert plain.GetOrigin() == (0.0, 0.0, 0.0) and plain.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert _files(tmp_path) == []                                         # nothing written anywhere


def test_statistics_in_memory_equal_the_written_ones(model, ct, tmp_path):
    from flareseg import predict
    path, img = ct
    labels, stats = predict(img, model, device="cpu", statistics=True)
    assert isinstance(labels, sitk.Image) and isinstance(stats, dict)
    assert main(["predict", "-i", str(path), "-o", str(tmp_path / "cli"), "-m", str(model), "-q",
                 "--device", "cpu", "--statistics"]) == 0
    written = json.loads((tmp_path / "cli" / "statistics.json").read_text())["scan"]
    assert json.loads(json.dumps(stats)) == written                      # same schema, same numbers
    assert np.array_equal(_arr(labels), _arr(sitk.ReadImage(str(tmp_path / "cli" / "scan.nii.gz"))))
    folder_labels, folder_stats = predict(path.parent, model, device="cpu", statistics=True)
    assert sorted(folder_labels) == sorted(folder_stats) == ["scan"]
    assert json.loads(json.dumps(folder_stats["scan"])) == written


def test_in_memory_image_with_an_output_is_written(model, ct, tmp_path):
    from flareseg import predict
    _, img = ct
    one = predict(img, model, tmp_path / "seg.nii.gz", device="cpu")
    assert one == tmp_path / "seg.nii.gz"
    assert np.array_equal(_arr(sitk.ReadImage(str(one))), _arr(predict(img, model, device="cpu")))
    rep = json.loads((tmp_path / "predict_report.json").read_text())
    assert rep["cases"][0]["input"] == "<in-memory image>" and rep["cases_ok"] == 1
    folder = predict(img, model, tmp_path / "out", device="cpu")
    assert folder == tmp_path / "out" / "image.nii.gz" and folder.is_file()   # one input: its path


def test_series_picks_one_series_of_a_dicom_folder(model, tmp_path):
    from flareseg import predict
    study = tmp_path / "study"
    write_series(study, ART, "arterial", 5, "a")
    write_series(study, VEN, "venous", 7, "v")
    with pytest.raises(InputError, match="2 DICOM series in one folder"):
        predict(study, model, device="cpu")
    assert predict(study, model, device="cpu", series=ART).GetSize() == (16, 16, 5)
    assert predict(study, model, device="cpu", series=[VEN]).GetSize() == (16, 16, 7)
    out = predict(study, model, tmp_path / "out", device="cpu", series=VEN)
    assert sitk.ReadImage(str(out)).GetSize() == (16, 16, 7)


@pytest.mark.parametrize("call, error, words", [
    (lambda p, m: p({"a": 1}, m), InputError, "expected a path, a SimpleITK.Image or a numpy array, got dict"),
    (lambda p, m: p(np.zeros((4, 4)), m, spacing=(1, 1, 1)), InputError, "expected a 3-D (Z, Y, X) array"),
    (lambda p, m: p(np.zeros((4, 4, 4), bool), m, spacing=(1, 1, 1)), InputError, "dtype bool"),
    (lambda p, m: p(np.zeros((4, 4, 4)), m), ConfigError, "spacing (x, y, z) in mm is needed"),
    (lambda p, m: p(np.zeros((4, 4, 4)), m, spacing=(1, 0, 1)), ConfigError, "spacing needs 3 finite positive"),
    (lambda p, m: p(np.zeros((4, 4, 4)), m, spacing=(1, 1)), ConfigError, "spacing needs 3"),
    (lambda p, m: p(np.zeros((4, 4, 4)), m, spacing=(1, 1, 1), origin="here"), ConfigError, "origin needs 3"),
    (lambda p, m: p(np.zeros((4, 4, 4)), m, spacing=(1, 1, 1), direction=(0,) * 9), ConfigError, "singular"),
    (lambda p, m: p("scan.nii.gz", m, spacing=(1, 1, 1)), ConfigError, "spacing go with a numpy array"),
    (lambda p, m: p("scan.nii.gz", m, series=7), ConfigError, "series expects a SeriesInstanceUID"),
    (lambda p, m: p("scan.nii.gz", None), InputError, "model: expected the path of a model folder"),
    (lambda p, m: p("scan.nii.gz", m, output=3), ConfigError, "output expects a path"),
    (lambda p, m: p("scan.nii.gz", m, preview=True, save_probabilities=True), ConfigError,
     "save_probabilities, preview need an output"),
])
def test_what_predict_cannot_take_raises_flaresegs_errors(model, call, error, words, tmp_path, monkeypatch):
    from flareseg import predict
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as e:
        call(predict, model)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert _files(tmp_path) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_device_is_one_config_error(model, ct, tmp_path):
    from flareseg import predict
    for out in (None, tmp_path / "out"):
        with pytest.raises(ConfigError, match=r"--device cuda \(inference.device\): no CUDA device"):
            predict(ct[1], model, out, device="cuda")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("env, torch_first, expected", [
    ({}, False, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, False, "ACTIVE"), ({}, True, None)])
def test_import_flareseg_makes_openmp_wait_passively(env, torch_first, expected):
    code = ("import os, sys\n" + ("import torch\n" if torch_first else "") + "import flareseg\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(expected)]
