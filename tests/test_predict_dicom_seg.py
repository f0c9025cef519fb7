"""flareseg predict --output-format dicom-seg on the shared real DICOM series, and --preview named
after -o (issue 27 items 6 and 7)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.cli import main
from tiny_model import tiny_plans, write_model_folder

BIAS = [0, 3, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]   # random weights + bias: some organs predicted


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                              seed=1, class_bias=BIAS)


@pytest.mark.slow   # ~20 s: a 512 x 512 x 20 series through the predictor (the writer itself: test_dicom_seg)
def test_predict_writes_a_dicom_seg_matching_the_label_map(model_dir, shared_data, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    series = shared_data / "ct" / "ts_example_ct_dicom"
    out = tmp_path / "out"
    assert main(["predict", "-i", str(series), "-o", str(out), "-m", str(model_dir), "--device", "cpu",
                 "--output-format", "dicom-seg", "-q"]) == 0
    nii, dcm = out / "ts_example_ct_dicom.nii.gz", out / "ts_example_ct_dicom.dcm"
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(nii)))
    seg = pydicom.dcmread(str(dcm))
    present = [int(c) for c in np.unique(lab) if c]
    assert present and len(seg.SegmentSequence) == len(present)
    sources = {pydicom.dcmread(str(f), stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID: f
               for f in series.iterdir()}
    img = sitk.ReadImage(str(nii))
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    total = 0
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = [float(v) for v in pydicom.dcmread(str(sources[uid]), stop_before_pixels=True).ImagePositionPatient]
        z = img.TransformPhysicalPointToIndex(pos)[2]
        cls = present[fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber - 1]
        assert np.array_equal(frames[i].astype(bool), lab[z] == cls)
        total += int(frames[i].sum())
    assert total == int((lab > 0).sum())          # every labelled voxel is in some frame
    import json
    rep = json.loads((out / "predict_report.json").read_text())
    assert rep["cases"][0]["dicom_seg"] == str(dcm)


def test_dicom_seg_needs_a_dicom_series(model_dir, shared_data, tmp_path, caplog):
    pytest.importorskip("highdicom")
    ct = shared_data / "ct" / "ts_example_ct_sm.nii.gz"
    assert main(["predict", "-i", str(ct), "-o", str(tmp_path / "o"), "-m", str(model_dir), "--device", "cpu",
                 "--output-format", "dicom-seg", "-q"]) == 2
    assert "no DICOM series" in caplog.text and not (tmp_path / "o").exists()


def test_preview_is_named_after_the_output_file(model_dir, tmp_path):
    arr = np.full((12, 40, 36), -1000, dtype=np.int16)
    arr[:, 8:32, 6:30] = 60
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / "scan_0000.nii.gz"))
    out = tmp_path / "res" / "seg.nii.gz"
    assert main(["predict", "-i", str(tmp_path / "scan_0000.nii.gz"), "-o", str(out), "-m", str(model_dir),
                 "--device", "cpu", "--preview", "-q"]) == 0
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.startswith(".")) == \
        ["predict_report.json", "seg.nii.gz", "seg_preview.png"]
