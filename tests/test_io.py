import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.io import (Geometry, InputError, atomic_path, geometry_mismatch, read_array, read_image,
                         write_array, write_image, write_json)


def test_roundtrip_formats_keep_geometry(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    geo = Geometry((6, 5, 4), (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    for ext in (".nii.gz", ".nii", ".mha", ".nrrd"):
        p = write_array(arr, geo, tmp_path / f"img{ext}")
        back, g2 = read_array(p)
        np.testing.assert_array_equal(back, arr)
        assert not geometry_mismatch(geo, g2), ext
        assert g2.spacing_zyx == pytest.approx((2.5, 0.8, 0.7))


def test_dicom_series_reads_as_3d_with_geometry(shared_data):
    img = read_image(shared_data / "ct" / "ts_example_ct_dicom")
    assert img.GetSize() == (512, 512, 20)
    assert img.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0))
    arr = sitk.GetArrayViewFromImage(img)
    assert arr.min() <= -1000 + 50 and arr.max() > 100  # HU after rescale


def test_kits_permuted_direction_survives_roundtrip(shared_data, tmp_path):
    src = shared_data / "labels" / "kits19_case_00002_segmentation.nii.gz"
    arr, geo = read_array(src)
    assert geo.direction != (1, 0, 0, 0, 1, 0, 0, 0, 1)  # permuted axes
    out = write_array(arr, geo, tmp_path / "k.nii.gz")
    back, g2 = read_array(out)
    assert not geometry_mismatch(geo, g2)
    np.testing.assert_array_equal(back, arr)


def test_bad_inputs_raise_naming_file(tmp_path):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(InputError, match="corrupt.nii.gz: corrupt file"):
        read_image(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")
    img4 = sitk.JoinSeries([sitk.Image(4, 4, 4, sitk.sitkInt16)] * 2)
    sitk.WriteImage(img4, str(tmp_path / "four.nii.gz"))
    with pytest.raises(InputError, match="3-D"):
        read_image(tmp_path / "four.nii.gz")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    write_image(sitk.Image(3, 3, 3, sitk.sitkUInt8), dest)
    assert dest.exists() and [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_atomic_write_gives_normal_permissions(tmp_path):
    """Not mkstemp's 0600: outputs must be readable by others (Docker host, shared servers)."""
    import os
    import stat
    mask = os.umask(0o022)
    os.umask(mask)
    dest = tmp_path / "x.json"
    write_json({"a": 1}, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~mask
