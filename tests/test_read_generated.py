"""Generated header/payload mismatches for every format the readers accept (issue 24).

Each example is a small volume written by a minimal writer of this file (so header and payload can
be set apart): ``.nii``, ``.nii.gz``, ``.mha`` raw and zlib, ``.mhd`` + ``.raw``/``.zraw``,
``.nrrd`` raw and gzip, detached ``.nhdr`` + ``.raw``/``.raw.gz``.  A mutation then makes the
header and the payload disagree: payload shorter or longer, element type smaller or larger, sizes
changed (the voxel count differs), or, for compressed payloads, a trailing gzip member holding data
or trailing bytes after the stream.  Empty gzip members after a gzip payload (the end-of-file block
bgzip/htslib append, an empty ``gzip`` member) hold no data and are accepted; after a zlib payload
(MetaImage) they are trailing data.  :func:`flareseg.io.read_image` must raise :class:`InputError` naming the
file (header or data file) and never return an array; the unmutated file must read back equal.

hypothesis runs derandomized (a fixed seed, no example database): :data:`EXAMPLES` examples for
each of the 60 (format, mutation) pairs of :data:`PAIRS` (1200 mismatches) and 2 x :data:`EXAMPLES`
consistent files per format (400 read-backs); about 25 s on one core.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from flareseg.errors import InputError  # noqa: E402
from flareseg.io import read_image  # noqa: E402

#: hypothesis examples per (format, mutation) pair (derandomized: the same examples on every run)
EXAMPLES = 20
SPACING = (1.5, 1.25, 3.0)

# numpy dtype -> (MetaImage, NRRD, NIfTI datatype code)
TYPES = {"u1": ("MET_UCHAR", "uchar", 2), "i2": ("MET_SHORT", "short", 4), "i4": ("MET_INT", "int", 8),
         "f4": ("MET_FLOAT", "float", 16), "f8": ("MET_DOUBLE", "double", 64)}

# name -> (suffix of the header file, compressed payload?)
FORMATS = {"nii": (".nii", False), "nii.gz": (".nii.gz", True), "mha": (".mha", False),
           "mha-zlib": (".mha", True), "mhd+raw": (".mhd", False), "mhd+zraw": (".mhd", True),
           "nrrd": (".nrrd", False), "nrrd-gzip": (".nrrd", True), "nhdr+raw": (".nhdr", False),
           "nhdr+raw.gz": (".nhdr", True)}
MUTATIONS = ("shorter", "longer", "dtype_smaller", "dtype_larger", "sizes", "trailing_member", "trailing_bytes")


@dataclass
class Layout:
    """What the header declares and what the payload holds."""
    dims: tuple[int, int, int]     # x, y, z as declared
    dtype: str                     # declared element type (a TYPES key)
    payload: bytes                 # the voxel bytes (before compression)
    after: bytes = b""             # bytes after the (compressed) stream
    extra_member: bytes = b""      # a further gzip member after the stream


def _compress(fmt: str, data: bytes) -> bytes:
    if fmt in ("mha-zlib", "mhd+zraw"):
        return zlib.compress(data)
    return gzip.compress(data)


def _nifti_header(lay: Layout) -> bytes:
    h = nib.Nifti1Header()
    h.set_data_dtype(np.dtype("<" + lay.dtype))
    h.set_data_shape(lay.dims)
    h.set_zooms(SPACING)
    aff = np.diag([*SPACING, 1.0])
    h.set_sform(aff, code=1)
    h.set_qform(aff, code=1)
    h["vox_offset"] = 352
    return h.binaryblock + b"\0" * 4


def write(folder: Path, fmt: str, lay: Layout) -> tuple[Path, Path]:
    """Write ``lay`` as format ``fmt``; returns (the file to read, the file holding the payload)."""
    suffix, compressed = FORMATS[fmt]
    stem = folder / f"case{suffix}"
    body = (_compress(fmt, lay.payload) if compressed else lay.payload) + lay.extra_member + lay.after
    x, y, z = lay.dims
    if fmt.startswith("nii"):
        data = _nifti_header(lay) + lay.payload
        stem.write_bytes((gzip.compress(data) + lay.extra_member + lay.after) if compressed else data + lay.after)
        return stem, stem
    if fmt.startswith(("mha", "mhd")):
        datafile = "LOCAL" if fmt.startswith("mha") else ("case.zraw" if compressed else "case.raw")
        head = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                f"CompressedData = {compressed}\n"
                + (f"CompressedDataSize = {len(_compress(fmt, lay.payload))}\n" if compressed else "")
                + "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
                f"ElementSpacing = {SPACING[0]} {SPACING[1]} {SPACING[2]}\nDimSize = {x} {y} {z}\n"
                f"ElementType = {TYPES[lay.dtype][0]}\nElementDataFile = {datafile}\n").encode()
        if datafile == "LOCAL":
            stem.write_bytes(head + body)
            return stem, stem
        (folder / datafile).write_bytes(body)
        stem.write_bytes(head)
        return stem, folder / datafile
    datafile = None if fmt.startswith("nrrd") else ("case.raw.gz" if compressed else "case.raw")
    head = ("NRRD0004\n"
            f"type: {TYPES[lay.dtype][1]}\ndimension: 3\nspace: left-posterior-superior\nsizes: {x} {y} {z}\n"
            f"space directions: ({SPACING[0]},0,0) (0,{SPACING[1]},0) (0,0,{SPACING[2]})\n"
            "kinds: domain domain domain\nendian: little\n"
            f"encoding: {'gzip' if compressed else 'raw'}\nspace origin: (0,0,0)\n"
            + (f"data file: {datafile}\n" if datafile else "") + "\n").encode()
    if datafile is None:
        stem.write_bytes(head + body)
        return stem, stem
    (folder / datafile).write_bytes(body)
    stem.write_bytes(head)
    return stem, folder / datafile


@st.composite
def volumes(draw) -> tuple[np.ndarray, str]:
    """A small (Z, Y, X) array and its type: integers (floats hold integer values: finite)."""
    shape = tuple(draw(st.integers(1, 6)) for _ in range(3))
    dtype = draw(st.sampled_from(sorted(TYPES)))
    lo, hi = (0, 255) if dtype == "u1" else (-2000, 3000)
    seed = draw(st.integers(0, 2**32 - 1))
    arr = np.random.default_rng(seed).integers(lo, hi, shape).astype("<" + dtype)
    return arr, dtype


def consistent(arr: np.ndarray, dtype: str) -> Layout:
    return Layout(tuple(reversed(arr.shape)), dtype, arr.tobytes())


@st.composite
def mutated(draw, kind: str) -> Layout:
    """A consistent volume, then one mutation of ``kind`` (see :data:`MUTATIONS`)."""
    arr, dtype = draw(volumes())
    lay = consistent(arr, dtype)
    size = np.dtype(dtype).itemsize
    if kind == "shorter":
        lay.payload = lay.payload[:-draw(st.integers(1, len(lay.payload)))]
    elif kind == "longer":
        lay.payload += bytes(draw(st.integers(1, 64)))
    elif kind in ("dtype_smaller", "dtype_larger"):
        other = [t for t in TYPES if (np.dtype(t).itemsize < size if kind == "dtype_smaller"
                                      else np.dtype(t).itemsize > size)]
        if not other:      # no smaller than a byte / larger than 8 bytes: the other direction
            other = [t for t in TYPES if np.dtype(t).itemsize != size]
        lay.dtype = draw(st.sampled_from(other))
    elif kind == "sizes":
        axis = draw(st.integers(0, 2))
        dims = list(lay.dims)
        new = draw(st.integers(1, 12).filter(lambda n: n != dims[axis]))
        dims[axis] = new
        lay.dims = tuple(dims)
    elif kind == "trailing_member":   # a member that holds data (an empty one is accepted after gzip)
        lay.extra_member = gzip.compress(bytes(draw(st.integers(1, 64))))
    else:
        lay.after = draw(st.binary(min_size=1, max_size=32))
    return lay


def _check_refused(folder: Path, fmt: str, lay: Layout, kind: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    header, data = write(folder, fmt, lay)
    try:
        img = read_image(header)
    except InputError as e:
        assert e.path in (str(header), str(data)), (fmt, kind, str(e))
        assert str(e).startswith(e.path + ": ") and "\n" not in str(e), str(e)
    else:
        pytest.fail(f"{fmt} {kind}: read an array of size {img.GetSize()} from a header declaring "
                    f"{lay.dims} {lay.dtype} over {len(lay.payload)} payload bytes")


#: every (format, mutation) pair; trailing data after a compressed stream only where there is one
PAIRS = [(f, m) for f in FORMATS for m in MUTATIONS if FORMATS[f][1] or not m.startswith("trailing")]


@pytest.mark.parametrize("fmt,kind", PAIRS)
def test_generated_mismatches_are_refused(fmt, kind, tmp_path):
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(mutated(kind))
    def run(lay):
        _check_refused(tmp_path / "case", fmt, lay, kind)
    run()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_generated_consistent_files_read_back_equal(fmt, tmp_path):
    @settings(max_examples=2 * EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(volumes())
    def run(vol):
        arr, dtype = vol
        folder = tmp_path / "case"
        folder.mkdir(exist_ok=True)
        for p in folder.iterdir():
            p.unlink()
        header, _ = write(folder, fmt, consistent(arr, dtype))
        img = read_image(header)
        back = sitk.GetArrayFromImage(img)
        assert back.shape == arr.shape and np.array_equal(back.astype(np.float64), arr.astype(np.float64)), fmt
        assert np.allclose(img.GetSpacing(), SPACING)
    run()


#: the end-of-file block bgzip/htslib append to every BGZF file: an empty gzip member (28 bytes)
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


@st.composite
def empty_members(draw) -> bytes:
    """One to three empty gzip members: the BGZF end-of-file block or an empty ``gzip`` member."""
    return b"".join(draw(st.lists(st.sampled_from([BGZF_EOF, gzip.compress(b"")]), min_size=1, max_size=3)))


@pytest.mark.parametrize("fmt", [f for f in FORMATS if FORMATS[f][1]])
def test_generated_empty_trailing_gzip_members(fmt, tmp_path):
    """After a gzip payload the empty members read back equal; after a zlib payload they are refused."""
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(volumes(), empty_members())
    def run(vol, tail):
        arr, dtype = vol
        lay = consistent(arr, dtype)
        lay.extra_member = tail
        if fmt in ("mha-zlib", "mhd+zraw"):
            _check_refused(tmp_path / "case", fmt, lay, "empty_member_after_zlib")
            return
        folder = tmp_path / "case"
        folder.mkdir(exist_ok=True)
        for p in folder.iterdir():
            p.unlink()
        header, _ = write(folder, fmt, lay)
        back = sitk.GetArrayFromImage(read_image(header))
        assert back.shape == arr.shape and np.array_equal(back.astype(np.float64), arr.astype(np.float64)), fmt
    run()


def test_bgzf_eof_block_after_nifti_is_accepted_and_data_after_it_refused(tmp_path):
    """A .nii.gz as bgzip writes it (payload member + BGZF EOF block) reads; a member holding data
    after the EOF block, or a run of empty members longer than the bound, is still trailing data."""
    from flareseg.file_check import EMPTY_MEMBERS_MAX
    arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5) - 30
    lay = consistent(arr, "i2")
    for tail, ok in ((BGZF_EOF, True), (BGZF_EOF + gzip.compress(b"\1"), False),
                     (BGZF_EOF * (EMPTY_MEMBERS_MAX // len(BGZF_EOF) + 2), False)):
        lay.extra_member = tail
        folder = tmp_path / f"t{len(tail)}"
        folder.mkdir()
        header, _ = write(folder, "nii.gz", lay)
        if ok:
            assert np.array_equal(sitk.GetArrayFromImage(read_image(header)), arr)
        else:
            with pytest.raises(InputError, match="trailing data|payload larger"):
                read_image(header)
