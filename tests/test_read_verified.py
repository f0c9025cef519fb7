"""The one verified read path (issue 24, read side): each reproduced case as a test.

Exact payloads (larger than the header says, trailing data), the voxel ceiling checked before
decompression, only regular files opened, CT plausibility, symlink-loop/FIFO messages.  DICOM rows
are in tests/test_read_dicom.py, geometry rows in tests/test_read_geometry.py, the generated
header/payload matrix in tests/test_read_generated.py.
"""
from __future__ import annotations

import gzip
import os
import re
import signal
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bad_input import check_contract, md5_tree, run_command
from flareseg import file_check
from flareseg.cases import list_cases
from flareseg.cli import main
from flareseg.data.phantoms import generate_case
from flareseg.image_check import MAX_IMAGE_VOXELS_ENV, ct_plausibility_problem, max_image_voxels
from flareseg.io import Geometry, InputError, read_image, write_array

GEO = Geometry((12, 10, 8), (1.5, 1.5, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _ct() -> np.ndarray:
    arr = np.full(GEO.shape_zyx, -1000, np.int16)
    arr[:, 2:8, 2:10] = 60
    arr[2:6, 3:6, 3:6] = 700
    return arr


def _label() -> np.ndarray:
    lab = np.zeros(GEO.shape_zyx, np.uint8)
    lab[2:6, 2:7, 2:6] = 1
    lab[3:6, 3:8, 7:11] = 3
    return lab


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""
    def boom(*_):
        raise TimeoutError(f"still running after {seconds} s: a read blocked")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _edit(p: Path, pattern: bytes, repl: bytes) -> Path:
    b = p.read_bytes()
    new = re.sub(pattern, repl, b, count=1)
    assert new != b, pattern
    p.write_bytes(new)
    return p


# --- the rows: a payload larger than the header says --------------------------------------

def _mha_z_halved(d: Path) -> Path:
    return _edit(write_array(_ct(), GEO, d / "bad.mha", compress=False), rb"DimSize = 12 10 8", b"DimSize = 12 10 4")


def _nrrd_sizes_halved(d: Path) -> Path:
    return _edit(write_array(_ct(), GEO, d / "bad.nrrd", compress=False), rb"sizes: 12 10 8", b"sizes: 12 10 4")


def _nrrd_short_over_float(d: Path) -> Path:
    p = write_array(_ct().astype(np.float32), GEO, d / "bad.nrrd", compress=False)
    return _edit(p, rb"type: float", b"type: short")


def _mha_uchar_over_int16(d: Path) -> Path:
    return _edit(write_array(_ct(), GEO, d / "bad.mha", compress=False), rb"MET_SHORT", b"MET_UCHAR")


def _nrrd_gzip_sizes_halved(d: Path) -> Path:
    return _edit(write_array(_ct(), GEO, d / "bad.nrrd", compress=True), rb"sizes: 12 10 8", b"sizes: 12 10 4")


def _nii_gz_trailing_member(d: Path) -> Path:
    p = write_array(_ct(), GEO, d / "bad.nii.gz")
    with open(p, "ab") as f:
        f.write(gzip.compress(b"\0" * 4096))
    return p


def _nii_gz_trailing_bytes(d: Path) -> Path:
    p = write_array(_ct(), GEO, d / "bad.nii.gz")
    with open(p, "ab") as f:
        f.write(b"\0" * 512)
    return p


def _nii_trailing_bytes(d: Path) -> Path:
    p = write_array(_ct(), GEO, d / "bad.nii", compress=False)
    with open(p, "ab") as f:
        f.write(b"\0" * 16)
    return p


def _nii_gz_voxels_in_stream_beyond_dims(d: Path) -> Path:
    """dim[3] halved inside the (decompressed) header: the stream then ends after the voxels."""
    p = write_array(_ct(), GEO, d / "bad.nii.gz")
    raw = bytearray(gzip.decompress(p.read_bytes()))
    struct.pack_into("<h", raw, 46, 4)
    p.write_bytes(gzip.compress(bytes(raw)))
    return p


LARGER = {
    "mha_dimsize_z_halved": (_mha_z_halved, "payload larger than the header says"),
    "nrrd_sizes_halved": (_nrrd_sizes_halved, "payload larger than the header says"),
    "nrrd_type_short_over_float32": (_nrrd_short_over_float, "payload larger than the header says"),
    "mha_met_uchar_over_int16": (_mha_uchar_over_int16, "payload larger than the header says"),
    "nrrd_gzip_sizes_halved": (_nrrd_gzip_sizes_halved, "payload larger than the header says"),
    "nii_gz_trailing_gzip_member": (_nii_gz_trailing_member, "trailing data"),
    "nii_gz_trailing_bytes": (_nii_gz_trailing_bytes, "trailing data"),
    "nii_trailing_bytes": (_nii_trailing_bytes, "payload larger than the header says"),
    "nii_gz_dim_halved": (_nii_gz_voxels_in_stream_beyond_dims, "payload larger than the header says"),
}


@pytest.mark.parametrize("row", list(LARGER))
def test_payload_larger_than_the_header_is_refused(row, tmp_path):
    make, reason = LARGER[row]
    p = make(tmp_path)
    with pytest.raises(InputError, match=re.escape(reason)) as e:
        read_image(p)
    assert str(e.value).startswith(f"{p}: corrupt file (") and "\n" not in str(e.value)


@pytest.mark.parametrize("row", ["mha_dimsize_z_halved", "nrrd_type_short_over_float32", "nii_gz_trailing_gzip_member"])
@pytest.mark.parametrize("command", ["evaluate", "import"])
def test_commands_refuse_the_larger_payload_and_go_on(row, command, tmp_path, capsys, caplog):
    """evaluate scored scrambled labels and import said "imported 9, 0 bad" before."""
    make, reason = LARGER[row]
    if command == "evaluate":
        pred, gt, out = tmp_path / "pred", tmp_path / "gt", tmp_path / "out"
        for case in ("bad", "good"):
            write_array(_label(), GEO, gt / f"{case}.nii.gz")
        write_array(_label(), GEO, pred / "good.nii.gz")
        bad = make(pred)
        argv, inputs, done = ["evaluate", "--pred", pred, "--gt", gt, "--out", out], [pred, gt], [out / "per_case.csv"]
    else:
        src, out = tmp_path / "src", tmp_path / "dataset"
        write_array(_ct(), GEO, src / "good_0000.nii.gz")
        bad = make(src)
        bad = bad.rename(bad.with_name(bad.name.replace("bad.", "bad_0000.")))
        argv, inputs, done = ["import", "--unlabeled", src, "--out", out], [src], \
            [out / "imagesUnlabeled" / "good_0000.nii.gz"]
    before = md5_tree(inputs)
    res = run_command(main, argv, capsys, caplog)
    check_contract(res, rc=1, names=[bad.name], reason=reason, inputs_before=before, inputs=inputs,
                   outputs=[out], done=done)


@contextmanager
def _decompressed_bytes():
    """Counts the bytes the reader's zlib decompressors put out (work done, not seconds: a loaded
    machine must not decide these tests)."""
    count = [0]
    real = file_check.zlib.decompressobj

    class Counting:
        def __init__(self, *a):
            self._d = real(*a)

        def decompress(self, *a):
            out = self._d.decompress(*a)
            count[0] += len(out)
            return out

        def flush(self, *a):
            out = self._d.flush(*a)
            count[0] += len(out)
            return out

        def __getattr__(self, name):
            return getattr(self._d, name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(file_check.zlib, "decompressobj", Counting)
        yield count


def test_trailing_gzip_members_are_not_read_in_full(tmp_path):
    """A small image followed by gigabytes of further gzip members: refused after the first."""
    p = write_array(_ct(), GEO, tmp_path / "big.nii.gz")
    member = gzip.compress(b"\0" * (64 << 20), compresslevel=9)       # 64 MiB of zeros in ~64 KiB
    with open(p, "ab") as f:
        for _ in range(64):                                          # 4 GiB after decompression
            f.write(member)
    with _decompressed_bytes() as count:
        with pytest.raises(InputError, match="trailing data after the compressed image"):
            read_image(p)
    assert count[0] < 128 << 20, count      # one member at most, not the 4 GiB


# --- the voxel ceiling ------------------------------------------------------------------------

def _declaring(tmp: Path, dims: tuple[int, int, int]) -> Path:
    """A small ``.nii.gz`` whose header declares ``dims`` (x, y, z); its data is the small image's."""
    p = write_array(_ct(), GEO, tmp / "huge.nii.gz")
    raw = bytearray(gzip.decompress(p.read_bytes()))
    struct.pack_into("<3h", raw, 42, *dims)
    p.write_bytes(gzip.compress(bytes(raw)))
    return p


def test_declared_size_over_the_ceiling_is_refused_before_decompressing(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_IMAGE_VOXELS_ENV, raising=False)
    assert max_image_voxels() == 1024 * 1024 * 2048
    p = _declaring(tmp_path, (2700, 2700, 2700))
    with _decompressed_bytes() as count:
        with pytest.raises(InputError, match=r"image too large: the header declares 2700 x 2700 x 2700 = "
                                             r"19683000000 voxels .* more than the limit of 2147483648"):
            read_image(p)
    assert count[0] <= 1 << 20, count       # the header's chunk, not the data
    # the same for the other formats and for ITK's own header read: a lower ceiling by the env var
    files = [write_array(_ct(), GEO, tmp_path / n) for n in ("x.nii.gz", "x.nii", "x.mha", "x.mhd", "x.nrrd")]
    monkeypatch.setenv(MAX_IMAGE_VOXELS_ENV, "500")
    for q in files:
        with pytest.raises(InputError, match=f"{MAX_IMAGE_VOXELS_ENV} to raise it"):
            read_image(q)
    monkeypatch.setenv(MAX_IMAGE_VOXELS_ENV, str(12 * 10 * 8))
    assert read_image(q).GetSize() == (12, 10, 8)
    monkeypatch.setenv(MAX_IMAGE_VOXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_IMAGE_VOXELS_ENV):
        max_image_voxels()


def test_real_ct_is_under_the_ceiling_and_reads(shared_data):
    img = read_image(shared_data / "ct" / "ts_example_ct_sm.nii.gz")
    assert img.GetSize() == (122, 101, 30)
    assert read_image(shared_data / "ct" / "ts_example_ct_dicom").GetSize() == (512, 512, 20)
    for f in sorted((shared_data / "labels").glob("*.nii.gz")):
        read_image(f)


# --- only regular files are read --------------------------------------------------------------

def test_fifo_and_device_are_refused_without_opening(tmp_path):
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    with deadline(20):
        with pytest.raises(InputError, match=r"scan.nii.gz: is a FIFO \(named pipe\), not an image file"):
            read_image(fifo)
        assert list_cases(tmp_path) == {"scan": fifo}        # listed, never opened: reading reports it
        with pytest.raises(InputError, match=r"is a FIFO \(named pipe\), not an image file or a folder"):
            list_cases(fifo)
    dev = tmp_path / "zero.nii"
    dev.symlink_to("/dev/zero")
    with deadline(20), pytest.raises(InputError, match="is a character device"):
        read_image(dev)


def test_fifo_as_detached_data_file_is_refused(tmp_path):
    p = write_array(_ct(), GEO, tmp_path / "x.mhd", compress=False)
    (tmp_path / "x.raw").unlink()
    os.mkfifo(tmp_path / "x.raw")
    with deadline(20), pytest.raises(InputError, match=r"x.raw: is a FIFO"):
        read_image(p)


def _fifo_row(tmp: Path, command: str) -> dict:
    if command == "evaluate":
        pred, gt, out = tmp / "pred", tmp / "gt", tmp / "out"
        for case in ("bad", "good"):
            write_array(_label(), GEO, gt / f"{case}.nii.gz")
        write_array(_label(), GEO, pred / "good.nii.gz")
        os.mkfifo(pred / "bad.nii.gz")
        return dict(argv=["evaluate", "--pred", pred, "--gt", gt, "--out", out], inputs=[pred, gt], out=out,
                    done=[out / "per_case.csv"])
    if command == "clean":
        labels, out = tmp / "labels", tmp / "cleaned"
        write_array(_label(), GEO, labels / "good.nii.gz")
        os.mkfifo(labels / "bad.nii.gz")
        return dict(argv=["clean", "--labels", labels, "--out", out], inputs=[labels], out=out,
                    done=[out / "labels" / "good.nii.gz"])
    src, out = tmp / "src", tmp / "dataset"
    write_array(_ct(), GEO, src / "good_0000.nii.gz")
    os.mkfifo(src / "bad_0000.nii.gz")
    return dict(argv=["import", "--unlabeled", src, "--out", out], inputs=[src], out=out,
                done=[out / "imagesUnlabeled" / "good_0000.nii.gz"])


@pytest.mark.parametrize("command", ["evaluate", "clean", "import"])
def test_commands_report_a_fifo_named_like_a_scan_and_go_on(command, tmp_path, capsys, caplog):
    r = _fifo_row(tmp_path, command)
    with deadline(120):
        res = run_command(main, r["argv"], capsys, caplog)
    check_contract(res, rc=1, names=["bad", "FIFO"], reason="only regular files are read", inputs_before={},
                   inputs=[], outputs=[r["out"]], done=r["done"])


def test_predict_input_messages_say_what_the_path_is(tmp_path, capsys, caplog):
    """-i a symlink loop said "does not exist", -i a FIFO "is not a folder" (exit 2 before the model)."""
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop)
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    for path, reason in ((loop, "symlink loop"), (fifo, "is a FIFO (named pipe), not an image file or a folder")):
        with deadline(60):
            res = run_command(main, ["predict", "-i", path, "-o", tmp_path / "out", "-m", tmp_path / "nomodel",
                                     "--device", "cpu", "-q"], capsys, caplog)
        check_contract(res, rc=2, names=[path.name], reason=reason, inputs_before={}, inputs=[])
        assert "does not exist" not in "\n".join(res.lines).replace("nomodel", "")
    with pytest.raises(InputError, match="symlink loop"):
        read_image(loop)
    broken = tmp_path / "gone.nii.gz"
    broken.symlink_to(tmp_path / "nowhere.nii.gz")
    with pytest.raises(InputError, match="broken symlink"):
        read_image(broken)


# --- CT plausibility --------------------------------------------------------------------------

def _nrrd_ushort(d: Path) -> Path:
    return _edit(write_array(_ct(), GEO, d / "bad_0000.nrrd", compress=False), rb"type: short", b"type: ushort")


def _nrrd_big_endian(d: Path) -> Path:
    return _edit(write_array(_ct(), GEO, d / "bad_0000.nrrd", compress=False), rb"endian: little", b"endian: big")


@pytest.mark.parametrize("make", [_nrrd_ushort, _nrrd_big_endian], ids=["ushort_over_signed", "big_endian_over_little"])
def test_implausible_ct_values_are_refused_by_import(make, tmp_path, capsys, caplog):
    src, out = tmp_path / "src", tmp_path / "dataset"
    write_array(_ct(), GEO, src / "good_0000.nii.gz")
    bad = make(src)
    arr = sitk.GetArrayFromImage(read_image(bad))                    # the file itself is consistent ...
    assert arr.max() > 3071 or arr.min() < -1024
    assert ct_plausibility_problem(arr)                               # ... its values are not a CT
    before = md5_tree([src])
    res = run_command(main, ["import", "--unlabeled", src, "--out", out], capsys, caplog)
    check_contract(res, rc=1, names=[bad.name], reason="not plausible as CT", inputs_before=before,
                   inputs=[src], outputs=[out], done=[out / "imagesUnlabeled" / "good_0000.nii.gz"])


def test_real_ct_and_phantoms_are_plausible(shared_data):
    for p in (shared_data / "ct" / "ts_example_ct_sm.nii.gz", shared_data / "ct" / "ts_example_ct_dicom"):
        assert ct_plausibility_problem(sitk.GetArrayFromImage(read_image(p))) is None
    for seed in range(3):
        img, *_ = generate_case(np.random.default_rng(seed))
        assert ct_plausibility_problem(img) is None
    padded = np.full((4, 64, 64), -3024, np.int16)                 # outside-the-FOV padding
    yy, xx = np.mgrid[:64, :64]
    padded[:, (yy - 32) ** 2 + (xx - 32) ** 2 < 32 ** 2] = -1000
    assert ct_plausibility_problem(padded) is None
    assert "not plausible as CT" in ct_plausibility_problem(_ct().view(np.uint16))


@pytest.mark.parametrize("command", ["evaluate", "clean"])
def test_evaluate_and_clean_say_what_a_bad_input_path_is(command, tmp_path, capsys, caplog):
    loop, fifo = tmp_path / "loop", tmp_path / "pipe"
    loop.symlink_to(loop)
    os.mkfifo(fifo)
    write_array(_label(), GEO, tmp_path / "gt" / "a.nii.gz")
    for path, reason in ((loop, "symlink loop"), (fifo, "FIFO")):
        argv = (["evaluate", "--pred", path, "--gt", tmp_path / "gt"] if command == "evaluate" else
                ["clean", "--labels", path, "--out", tmp_path / "out"])
        with deadline(60):
            res = run_command(main, argv, capsys, caplog)
        check_contract(res, rc=2, names=[path.name], reason=reason, inputs_before={}, inputs=[])


def test_predictor_refuses_implausible_ct():
    from flareseg.inference.predictor import validate_array
    validate_array(_ct(), (3.0, 1.5, 1.5), "ok.nii.gz")
    with pytest.raises(InputError, match=r"x.nrrd: not plausible as CT: only .* % of the voxels lie in -1024..3071 HU"):
        validate_array(_ct().view(np.uint16), (3.0, 1.5, 1.5), "x.nrrd")


def test_read_json_refuses_a_fifo_unopened(tmp_path):
    from flareseg.io import read_json
    os.mkfifo(tmp_path / "dataset.json")
    with deadline(20), pytest.raises(InputError, match=r"dataset.json: is a FIFO \(named pipe\)"):
        read_json(tmp_path / "dataset.json")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "plans.json")
