"""DICOM SEG output (issue 27 item 7): the label map of the shared real DICOM series written as a
DICOM Segmentation that references the series, read back with pydicom and compared frame by frame
with the NIfTI labels."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.config import ConfigError
from flareseg.dicom import pick_series
from flareseg.io import read_image
from flareseg.labels import CLASS_NAMES

pytest.importorskip("highdicom")
import pydicom  # noqa: E402

from flareseg.inference.dicom_seg import read_source_datasets, source_slices, write_dicom_seg  # noqa: E402

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def series(shared_data):
    """(series folder, CT read by our reader, labels on its grid, source headers)."""
    folder = shared_data / "ct" / "ts_example_ct_dicom"
    ct = read_image(folder)
    stored = read_image(shared_data / "ct" / "ts_example_ct_dicom_seg_flare.nii.gz")   # y flipped on disk
    labels = sitk.Resample(stored, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    # the same physical grid: resampling only reorders voxels (nothing lost, nothing made up)
    assert np.array_equal(np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=15),
                          np.bincount(sitk.GetArrayViewFromImage(stored).ravel().astype(np.int64), minlength=15))
    return folder, ct, labels, read_source_datasets(pick_series(folder).files)


def test_every_frame_equals_the_nifti_labels(series, tmp_path):
    folder, ct, labels, sources = series
    dest = write_dicom_seg(labels, sources, CLASS_NAMES, tmp_path / "case.dcm")
    seg = pydicom.dcmread(str(dest))
    arr = sitk.GetArrayFromImage(labels)
    present = [int(c) for c in np.unique(arr) if c]
    assert len(present) == 7                                            # liver, spleen, ... stomach
    assert seg.SOPClassUID == SEG_STORAGE and seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    # it references the input series: every source image, in its frame of reference
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {s.SOPInstanceUID for s in sources} and len(refs) == 20
    # one segment per class present, named and coded
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [CLASS_NAMES[c] for c in present]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"   # liver
    adrenal = seg.SegmentSequence[present.index(7)]
    assert adrenal.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    # every frame: the mask of its segment on the slice of its source image
    z_of = {s.SOPInstanceUID: ct.TransformPhysicalPointToIndex([float(v) for v in s.ImagePositionPatient])[2]
            for s in sources}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    seen = set()
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z, cls = z_of[uid], present[number - 1]
        assert np.array_equal(frames[i].astype(bool), arr[z] == cls), (i, uid, cls)
        seen.add((z, cls))
    # and no slice of a class is missing (empty frames are omitted)
    assert seen == {(z, c) for c in present for z in range(arr.shape[0]) if (arr[z] == c).any()}


def test_highdicom_reads_it_back_per_source_instance(series, tmp_path):
    import highdicom as hd
    folder, ct, labels, sources = series
    seg = hd.seg.segread(str(write_dicom_seg(labels, sources, CLASS_NAMES, tmp_path / "case.dcm")))
    arr = sitk.GetArrayFromImage(labels)
    present = [int(c) for c in np.unique(arr) if c]
    uids = [s.SOPInstanceUID for s in sources]
    got = seg.get_pixels_by_source_instance(uids, combine_segments=True)   # segment numbers 1..n
    lut = np.zeros(15, dtype=np.uint8)
    lut[present] = np.arange(1, len(present) + 1)
    for s, frame in zip(sources, got):
        z = ct.TransformPhysicalPointToIndex([float(v) for v in s.ImagePositionPatient])[2]
        assert np.array_equal(frame, lut[arr[z]])


def test_labels_off_the_series_grid_are_refused(series, tmp_path):
    folder, ct, labels, sources = series
    shifted = sitk.Image(labels)
    shifted.SetOrigin(tuple(o + 0.5 * s for o, s in zip(labels.GetOrigin(), labels.GetSpacing())))
    with pytest.raises(ValueError, match="source instance .* series' grid"):
        write_dicom_seg(shifted, sources, CLASS_NAMES, tmp_path / "x.dcm")
    flipped = sitk.Flip(labels, [False, True, False])        # the file's own layout: y reversed
    with pytest.raises(ValueError, match="orientation"):
        write_dicom_seg(flipped, sources, CLASS_NAMES, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()
    assert sorted(source_slices(labels, sources)) == list(range(20))


def test_empty_label_map_and_unnamed_values(series, tmp_path):
    folder, ct, labels, sources = series
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    seg = pydicom.dcmread(str(write_dicom_seg(empty, sources, {0: "background", 1: "liver", 14: "tumor"},
                                              tmp_path / "e.dcm")))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumor"] and not seg.pixel_array.any()
    with pytest.raises(ValueError, match="no class name"):
        write_dicom_seg(labels, sources, {1: "liver"}, tmp_path / "u.dcm")


def test_without_highdicom_a_one_line_config_error(series, tmp_path, monkeypatch):
    folder, ct, labels, sources = series
    monkeypatch.setitem(sys.modules, "highdicom", None)      # import highdicom raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'flareseg\[dicom-seg\]'"):
        write_dicom_seg(labels, sources, CLASS_NAMES, tmp_path / "x.dcm")
