"""`flareseg predict`: naming, reports, statistics, failing cases, real files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.cli import main
from flareseg.inference.commands import case_name, collect_inputs
from flareseg.inference.statistics import label_statistics
from flareseg.io import Geometry, geometry_mismatch, read_image
from flareseg.nnunet.model_folder import tiny_plans, write_model_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # FLARE23 labels; 3 mm spacing keeps the real files at a few dozen windows
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                              seed=1)


def _ct(path, shape=(16, 40, 36), spacing=(1.5, 1.5, 2.5)):
    arr = np.full(shape, -1000, dtype=np.int16)
    arr[:, 8:32, 6:30] = 60
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return img


def test_case_names_and_collection(tmp_path):
    _ct(tmp_path / "a_0000.nii.gz")
    _ct(tmp_path / "a_0001.nii.gz")   # second channel: ignored
    _ct(tmp_path / "b.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    assert case_name(tmp_path / "a_0000.nii.gz") == "a"
    assert [n for n, _ in collect_inputs(tmp_path)] == ["a", "b"]


def test_folder_with_a_bad_case_continues(tmp_path, model_dir):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    img = _ct(inp / "good_0000.nii.gz")
    (inp / "broken.nii.gz").write_bytes(b"not an image")
    rc = main(["predict", "-i", str(inp), "-o", str(out), "-m", str(model_dir), "--device", "cpu",
               "--statistics", "-q"])
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "predict_report.json", "statistics.json"]
    assert geometry_mismatch(Geometry.of(sitk.ReadImage(str(out / "good.nii.gz"))), Geometry.of(img)) == []
    rep = json.loads((out / "predict_report.json").read_text())
    status = {c["case"]: c for c in rep["cases"]}
    assert status["good"]["status"] == "ok" and status["broken"]["status"] == "failed"
    assert "broken.nii.gz" in status["broken"]["error"]
    assert status["good"]["windows"]["windows_total"] > 0 and rep["device"] == "cpu"
    assert {"torch", "nnunetv2", "flareseg", "cc3d"} <= set(rep["versions"])
    assert "?" not in rep["versions"].values() and "not installed" not in rep["versions"].values()
    stats = json.loads((out / "statistics.json").read_text())
    assert set(stats) == {"good"} and "liver" in stats["good"]["volumes_ml"]
    assert "components" in stats["good"]["tumor"]


def test_label_statistics_volumes_and_tumor_burden():
    lab = np.zeros((10, 10, 10), dtype=np.uint8)
    lab[:2, :5, :5] = 1          # 50 voxels liver
    lab[5, 5, 5] = 14
    lab[8:10, 8:10, 8:10] = 14   # two tumor components: 1 + 8 voxels
    s = label_statistics(lab, (2.0, 1.0, 0.5), {0: "background", 1: "liver", 3: "spleen", 14: "tumor"})
    assert s["volumes_ml"] == {"liver": 0.05, "spleen": 0.0, "tumor": 0.009}
    assert s["tumor"] == {"volume_ml": 0.009, "components": 2, "largest_ml": 0.008}


def test_real_files_through_cli(tmp_path, model_dir, shared_data):
    nii = shared_data / "ct" / "ts_example_ct_sm.nii.gz"
    dcm = shared_data / "ct" / "ts_example_ct_dicom"
    assert main(["predict", "-i", str(nii), "-o", str(tmp_path / "x.nii.gz"), "-m", str(model_dir),
                 "--device", "cpu", "-q"]) == 0
    out = sitk.ReadImage(str(tmp_path / "x.nii.gz"))
    assert geometry_mismatch(Geometry.of(out), Geometry.of(sitk.ReadImage(str(nii)))) == []
    assert main(["predict", "-i", str(dcm), "-o", str(tmp_path / "d"), "-m", str(model_dir),
                 "--device", "cpu", "--no-skip", "-q"]) == 0
    out = sitk.ReadImage(str(tmp_path / "d" / "ts_example_ct_dicom.nii.gz"))
    assert geometry_mismatch(Geometry.of(out), Geometry.of(read_image(dcm))) == []


@pytest.mark.parametrize("flag", [[], ["--no-reorient"]])
def test_permuted_storage_through_cli(tmp_path, model_dir, flag):
    """A sagittally stored scan: reoriented unless --no-reorient; the output keeps the stored grid."""
    stored = sitk.PermuteAxes(_ct(tmp_path / "axial.nii.gz"), [2, 1, 0])  # array axis 0 = patient x
    sitk.WriteImage(stored, str(tmp_path / "sag.nii.gz"))
    assert main(["predict", "-i", str(tmp_path / "sag.nii.gz"), "-o", str(tmp_path / "out"), "-m",
                 str(model_dir), "--device", "cpu", "-q", *flag]) == 0
    out = sitk.ReadImage(str(tmp_path / "out" / "sag.nii.gz"))
    assert geometry_mismatch(Geometry.of(out), Geometry.of(stored)) == []
    rep = json.loads((tmp_path / "out" / "predict_report.json").read_text())
    assert rep["settings"]["reorient"] == (not flag)
    assert rep["cases"][0]["reoriented"] == (None if flag else [2, 1, 0])


@pytest.mark.parametrize("mode", ["bspline", "linear", "nnunet"])
def test_image_resampling_flag_writes_labels_on_the_input_grid(tmp_path, model_dir, mode):
    img = _ct(tmp_path / "c_0000.nii.gz", spacing=(1.1, 1.1, 4.5))  # anisotropic: stock's separate z
    out = tmp_path / "out"
    rc = main(["predict", "-i", str(tmp_path / "c_0000.nii.gz"), "-o", str(out), "-m", str(model_dir),
               "--device", "cpu", "--image-resampling", mode, "--no-skip", "-q"])
    assert rc == 0
    lab = sitk.ReadImage(str(out / "c.nii.gz"))
    assert geometry_mismatch(Geometry.of(lab), Geometry.of(img)) == []
    assert json.loads((out / "predict_report.json").read_text())["settings"]["image_resampling"] == mode
