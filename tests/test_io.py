import re

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg import file_check
from flareseg.io import (Geometry, InputError, atomic_path, geometry_mismatch, read_array, read_image,
                         write_array, write_image, write_json)


def test_roundtrip_formats_keep_geometry(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    geo = Geometry((6, 5, 4), (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        p = write_array(arr, geo, tmp_path / f"img{ext}")
        back, g2 = read_array(p)
        np.testing.assert_array_equal(back, arr)
        assert not geometry_mismatch(geo, g2), ext
        assert g2.spacing_zyx == pytest.approx((2.5, 0.8, 0.7))
    # .mhd names its data file after itself: no temp name may leak into the header or the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["img.nii.gz", "img.nii", "img.mha", "img.mhd", "img.zraw", "img.nrrd"])
    assert b"ElementDataFile = img.zraw" in (tmp_path / "img.mhd").read_bytes()


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


def test_ctrl_c_just_after_the_temp_is_created_leaves_no_temp(tmp_path, monkeypatch):
    """A Ctrl-C can land between the system call that creates the temp and the writer learning
    its name (tempfile.mkstemp's and mkdtemp's window); the temp must still be removed.
    Simulated: every os.open that creates a file, and every os.mkdir, raises KeyboardInterrupt
    right after creating it.  Both writes: a temp file (NIfTI) and a temp folder (.mhd)."""
    import os
    real_open, real_mkdir = os.open, os.mkdir

    def open_then_interrupted(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        if flags & os.O_CREAT:
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    def mkdir_then_interrupted(path, *a, **k):
        real_mkdir(path, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "out.nii.gz") as tmp:
            tmp.write_bytes(b"never")
    monkeypatch.setattr(os, "mkdir", mkdir_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(sitk.Image(3, 3, 3, sitk.sitkUInt8), tmp_path / "out.mhd")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_normal_permissions(tmp_path):
    """Not mkstemp's 0600: outputs must be readable by others (Docker host, shared servers)."""
    import os
    import stat
    mask = os.umask(0o022)
    os.umask(mask)
    dest = tmp_path / "x.json"
    write_json({"a": 1}, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~mask


# --- the bytes on disk are verified before SimpleITK reads them ------------------------------------

def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


def test_corrupt_real_nifti_gz_is_refused_though_simpleitk_accepts_it(shared_data, tmp_path):
    """A broken CRC, a corrupted deflate stream or a file cut to 1/3: SimpleITK returns garbage or
    zeros without an error; read_image names the file and says 'corrupt file'."""
    src = shared_data / "ct" / "ts_example_ct_sm.nii.gz"
    data = src.read_bytes()
    good = sitk.GetArrayFromImage(sitk.ReadImage(str(src)))
    bad = {"crc": _flip(data, len(data) - 6), "isize": _flip(data, len(data) - 2),
           "deflate": _flip(data, len(data) // 2), "third": data[: len(data) // 3]}
    for name, b in bad.items():
        p = tmp_path / f"{name}.nii.gz"
        p.write_bytes(b)
        if name in ("crc", "isize", "third"):  # what SimpleITK does today: no error
            arr = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            assert arr.shape == good.shape
        with pytest.raises(InputError, match=rf"{name}.nii.gz: corrupt file \(") as e:
            read_image(p)
        assert ("truncated" if name == "third" else "unreadable") in str(e.value)
    # the intact file still reads, identical to SimpleITK's own read
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(src)), good)


def test_streaming_in_small_chunks_reads_intact_files_and_counts_nan(tmp_path, monkeypatch):
    """Chunk boundaries that split the header, a voxel and gzip members must not matter."""
    import gzip
    arr = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    arr[0, 0, 0] = np.nan
    arr[2, 3, 4] = np.inf
    arr[1, 2, 3] = -np.inf
    geo = Geometry((5, 4, 3), (0.5, 0.5, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    gz = write_array(arr, geo, tmp_path / "f.nii.gz")
    raw = write_array(arr, geo, tmp_path / "f.nii", compress=False)
    members = tmp_path / "m.nii.gz"  # two concatenated gzip members are one valid gzip file
    body = gzip.decompress(gz.read_bytes())
    members.write_bytes(gzip.compress(body[:401]) + gzip.compress(body[401:]))
    monkeypatch.setattr(file_check, "_CHUNK", 7)
    for p in (gz, raw, members):
        assert file_check.verify_image_file(p) == 3, p.name
        assert file_check.nifti_nonfinite_count(p) == 3
        with pytest.raises(InputError, match=rf"{p.name}: holds 3 NaN/inf voxels"):
            read_image(p)
    ok = write_array(np.nan_to_num(arr, posinf=0, neginf=0), geo, tmp_path / "ok.nii.gz")
    assert file_check.verify_image_file(ok) == 0
    assert read_array(ok)[0][1, 2, 3] == 0
    # float .mha keeps NaN in the array: refused from the array
    with pytest.raises(InputError, match="holds 3 NaN/inf voxels"):
        read_image(write_array(arr, geo, tmp_path / "f.mha"))


def _tiny(tmp_path, name, compress=True, dtype=np.int16):
    arr = (np.arange(4 * 5 * 6) % 7).astype(dtype).reshape(4, 5, 6)
    geo = Geometry((6, 5, 4), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return write_array(arr, geo, tmp_path / name, compress=compress)


def test_truncated_uncompressed_files_are_refused(tmp_path):
    for name in ("t.nii", "t.mha", "t.nrrd"):
        p = _tiny(tmp_path, name, compress=False)
        read_image(p)
        p.write_bytes(p.read_bytes()[:-10])
        with pytest.raises(InputError, match=rf"{name}: corrupt file \(truncated: the header promises 240 "
                                             r"bytes of voxel data.*holds 230\)"):
            read_image(p)
    # .mhd with its data in a separate (compressed) file
    p = _tiny(tmp_path, "d.mhd")
    data = next(tmp_path.glob("d.*raw"))
    read_image(p)
    data.write_bytes(data.read_bytes()[:-3])
    with pytest.raises(InputError, match=rf"{data.name}: corrupt file"):
        read_image(p)
    data.unlink()
    with pytest.raises(InputError, match="d.mhd: corrupt file .*missing"):
        read_image(p)


def test_corrupt_compressed_mha_and_nrrd_are_refused(tmp_path):
    for name in ("c.mha", "c.nrrd"):
        p = _tiny(tmp_path, name)
        data = p.read_bytes()
        p.write_bytes(_flip(data, len(data) - 3))  # in the zlib Adler-32 / gzip length trailer
        with pytest.raises(InputError, match=rf"{name}: corrupt file \(compressed data unreadable"):
            read_image(p)
        p.write_bytes(data[: len(data) - 20])
        with pytest.raises(InputError, match=rf"{name}: corrupt file \(compressed data ends"):
            read_image(p)


def test_bzip2_nrrd_is_verified(tmp_path):
    import bz2
    from flareseg.file_check import verify_image_file
    body = np.zeros((4, 5, 6), np.int16).tobytes()
    head = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 6 5 4\nspacings: 1 1 2\nencoding: bzip2\nendian: little\n\n"
    p = tmp_path / "b.nrrd"
    p.write_bytes(head + bz2.compress(body))
    assert verify_image_file(p) == 0
    p.write_bytes(head + bz2.compress(body)[:-8])
    with pytest.raises(InputError, match="b.nrrd: corrupt file .*truncated"):
        verify_image_file(p)
    p.write_bytes(head + bz2.compress(body[:-2]))
    with pytest.raises(InputError, match="b.nrrd: corrupt file .*promises 240 bytes"):
        verify_image_file(p)


def _set_nifti_pixdim(path, axis, value):
    import struct
    b = bytearray(path.read_bytes())
    struct.pack_into("<f", b, 76 + 4 * axis, value)
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("value", [0.0, -2.5, float("nan"), float("inf")])
def test_invalid_spacing_is_refused_not_read_as_1mm(tmp_path, value):
    p = _tiny(tmp_path, "s.nii", compress=False)
    _set_nifti_pixdim(p, 2, value)
    with pytest.raises(InputError, match=rf"s.nii: invalid voxel spacing \(0.8, {value:g}, 2.5\) in the header \(pixdim\)"):
        read_image(p)
    m = _tiny(tmp_path, "s.mha", compress=False)
    m.write_bytes(re.sub(rb"ElementSpacing = \S+ \S+ 2.5", f"ElementSpacing = 0.8 {value} 2.5".encode(), m.read_bytes()))
    with pytest.raises(InputError, match=r"s.mha: invalid voxel spacing .*ElementSpacing"):
        read_image(m)
    if value < 0:  # a nrrd space direction (0,-2.5,0) is a flipped axis with 2.5 mm spacing
        return
    n = _tiny(tmp_path, "s.nrrd", compress=False)
    n.write_bytes(n.read_bytes().replace(b"(0,0.80000000000000004,0)", f"(0,{value},0)".encode()))
    with pytest.raises(InputError, match=r"s.nrrd: invalid voxel spacing .*space directions"):
        read_image(n)


def test_check_slice_positions():
    from flareseg.dicom import check_slice_positions
    assert check_slice_positions([0, 2.5, 5.0, 7.5]) is None
    assert check_slice_positions([7.5, 0.004, 2.5, 5.0, 10.0]) is None  # any order, rounding jitter
    why = check_slice_positions([0, 2.5, 5.0, 10.0, 12.5], ["a", "b", "c", "d", "e"])
    assert why == ("non-uniform slice spacing: gap of 5 mm between slices 3 and 4 of 5 (c, d) "
                   "where the rest are 2.5 mm")
    assert "duplicate slice position" in check_slice_positions([0, 2.5, 2.5, 5.0])
    assert "2 more uneven" in check_slice_positions([0, 1, 2, 3, 5, 6, 8, 10, 11])


def test_dicom_series_with_a_missing_slice_is_refused(shared_data, tmp_path, capfd):
    import shutil
    src = shared_data / "ct" / "ts_example_ct_dicom"
    dst = tmp_path / "series"
    shutil.copytree(src, dst)
    files = sorted(dst.iterdir())
    files[len(files) // 2].unlink()
    capfd.readouterr()
    with pytest.raises(InputError) as e:
        read_image(dst)
    msg = str(e.value)
    assert re.match(rf"{re.escape(str(dst))}: non-uniform slice spacing: gap of 4 mm between slices \d+ and \d+ "
                    r"of 19 \(CT\.[0-9.]+, CT\.[0-9.]+\)", msg), msg
    assert msg.endswith("where the rest are 2 mm")
    assert "WARNING" not in capfd.readouterr().err  # ITK's own warning is silenced


# --- temp files of killed writers -----------------------------------------------------------------

def _dead_pid() -> int:
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_dead_writers_are_removed_live_and_foreign_ones_stay(tmp_path, caplog):
    import logging
    import os
    import flareseg.io as fio
    host = fio._writer_host()
    stale = tmp_path / f".out.nii.gz.{host}-{_dead_pid()}.abc123_x.tmp.nii.gz"
    live = tmp_path / f".out.nii.gz.{host}-{os.getppid()}.q9w8e7r6.tmp.nii.gz"
    mine = tmp_path / f".b.json.{host}-{os.getpid()}.zz11yy22.tmp.json"
    other_host = tmp_path / f".out.nii.gz.elsewhere-{_dead_pid()}.abc123_x.tmp.nii.gz"
    old_style = tmp_path / ".out.nii.gz.k2j3h4g5.tmp.nii.gz"
    for p in (stale, live, mine, other_host, old_style):
        p.write_bytes(b"half")
    with caplog.at_level(logging.INFO, logger="flareseg.io"):
        assert fio.remove_stale_temps(tmp_path) == [stale]
    assert any(str(stale) in r.getMessage() for r in caplog.records)
    assert not stale.exists() and live.exists() and mine.exists() and other_host.exists() and old_style.exists()

    # the first atomic write into a folder in this process cleans it; the temp names carry host-pid
    folder = tmp_path / "out"
    folder.mkdir()
    stale2 = folder / f".a.json.{host}-{_dead_pid()}.abc123_x.tmp.json"
    stale2.write_text("{")
    with atomic_path(folder / "a.json") as tmp:
        assert fio._TEMP_RE.match(tmp.name)["host"] == host
        assert fio._TEMP_RE.match(tmp.name)["pid"] == str(os.getpid())
        tmp.write_text("{}")
    assert not stale2.exists() and [p.name for p in folder.iterdir()] == ["a.json"]
    stale2.write_text("{")  # later writes into the same folder do not list it again
    write_json({}, folder / "b.json")
    assert stale2.exists()
