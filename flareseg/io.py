"""Image and file I/O with geometry, atomic writes and input validation.

Arrays are numpy ``(Z, Y, X)``; :class:`Geometry` keeps SimpleITK's ``(x, y, z)`` order for
spacing/origin/direction and offers ``spacing_zyx`` for numpy code.  Every write goes to a
temporary file in the destination folder that is renamed into place, so an interrupted run never
leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import socket
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")

log = logging.getLogger(__name__)


class InputError(ValueError):
    """Bad input file; the message names the file and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Geometry:
    """Physical grid of an image. ``size``/``spacing``/``origin`` in SimpleITK (x, y, z) order, mm."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, img: sitk.Image) -> "Geometry":
        return cls(tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                   tuple(img.GetDirection()))

    @property
    def shape_zyx(self) -> tuple[int, ...]:
        return tuple(reversed(self.size))

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing))

    def apply(self, img: sitk.Image) -> sitk.Image:
        if tuple(img.GetSize()) != self.size:
            raise ValueError(f"array size {img.GetSize()} does not match geometry size {self.size}")
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def to_json(self) -> dict[str, Any]:
        return {"size": list(self.size), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Geometry":
        return cls(tuple(int(v) for v in d["size"]), tuple(float(v) for v in d["spacing"]),
                   tuple(float(v) for v in d["origin"]), tuple(float(v) for v in d["direction"]))


def image_suffix(path: os.PathLike | str) -> str:
    """The image extension of ``path`` (``.nii.gz`` counts as one), or ``""`` for a folder/unknown."""
    name = Path(path).name.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def strip_suffix(path: os.PathLike | str) -> str:
    name = Path(path).name
    s = image_suffix(name)
    return name[: len(name) - len(s)] if s else name


def case_id_from_name(path: os.PathLike | str, channel_suffix: bool = True) -> str:
    """``FLARE23_0001_0000.nii.gz`` -> ``FLARE23_0001``; DICOM folder -> folder name.

    Label files carry no channel suffix (``FLARE23_0000.nii.gz`` is case ``FLARE23_0000``):
    pass ``channel_suffix=False`` for them."""
    stem = Path(path).name if Path(path).is_dir() else strip_suffix(path)
    if channel_suffix and stem.endswith("_0000"):
        stem = stem[:-5]
    return stem


def is_dicom_dir(path: os.PathLike | str) -> bool:
    """True for a folder holding a DICOM series (GDCM's warning for other folders is silenced)."""
    p = Path(path)
    if not p.is_dir():
        return False
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


# ---------------------------------------------------------------------------------------------
# Verification of the bytes on disk before SimpleITK reads them.
#
# SimpleITK (ITK's NIfTI reader over zlib's gzread) accepts a .nii.gz with a broken CRC, with a
# corrupted deflate stream or cut to a third of its length, and returns garbage or zeros without an
# error; a plain .nii cut short reads the same way; pixdim 0 becomes 1 mm; NaN voxels become 0.
# ``verify_image_file`` streams the file once (compressed data in chunks through zlib, which checks
# the CRC-32/Adler-32 and the stored length), compares the payload with what the header promises and
# checks the spacing fields, without holding a second copy of the image in memory.
# ---------------------------------------------------------------------------------------------

_CHUNK = 1 << 20
_HEADER_MAX = 1 << 20  # longest text header (mha/nrrd) read before calling the file corrupt
_GZIP_MAGIC = b"\x1f\x8b"


def _corrupt(path: Path, detail: str) -> InputError:
    return InputError(path, f"corrupt file ({detail})")


_ZLIB_ERRORS = {"incorrect data check": "checksum mismatch", "incorrect length check": "length mismatch"}


def _zlib_error(path: Path, e: zlib.error) -> InputError:
    detail = str(e).split("decompressing data: ", 1)[-1]
    return _corrupt(path, f"compressed data unreadable: {_ZLIB_ERRORS.get(detail, detail)}")


def _raw_chunks(f: BinaryIO) -> Iterator[bytes]:
    for b in iter(lambda: f.read(_CHUNK), b""):
        yield b


def _inflate(f: BinaryIO, path: Path, members: bool) -> Iterator[bytes]:
    """Decompressed bytes of the gzip or zlib stream starting at ``f``'s position, in chunks.

    zlib verifies the trailer (gzip: CRC-32 and length; zlib: Adler-32); a stream that ends before
    its trailer is reported as truncated.  With ``members`` (gzip files) further concatenated gzip
    members are read too; bytes after the last member are ignored, as zlib's ``gzread`` does.
    """
    d = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
    buf = b""
    seen = False
    while True:
        if not buf:
            buf = f.read(_CHUNK)
            if not buf:
                break
            seen = True
        try:
            out = d.decompress(buf, _CHUNK)
        except zlib.error as e:
            raise _zlib_error(path, e) from None
        if out:
            yield out
        buf = d.unconsumed_tail
        if d.eof:
            buf = d.unused_data
            if not members:
                return
            while len(buf) < 2:
                more = f.read(_CHUNK)
                if not more:
                    break
                buf += more
            if buf[:2] != _GZIP_MAGIC:
                return
            d = zlib.decompressobj(32 + zlib.MAX_WBITS)
    try:
        out = d.flush()
    except zlib.error as e:
        raise _zlib_error(path, e) from None
    if out:
        yield out
    if not d.eof:
        raise _corrupt(path, "compressed data ends before its end marker: truncated" if seen
                       else "no compressed data")


def _bunzip(f: BinaryIO, path: Path) -> Iterator[bytes]:
    import bz2
    d = bz2.BZ2Decompressor()
    for buf in _raw_chunks(f):
        while buf:
            try:
                out = d.decompress(buf, _CHUNK)
            except (OSError, ValueError) as e:
                raise _corrupt(path, f"bzip2 data unreadable: {e}") from None
            if out:
                yield out
            buf = b""
            while not d.eof and not d.needs_input:
                out = d.decompress(b"", _CHUNK)
                if out:
                    yield out
            if d.eof:
                return
    if not d.eof:
        raise _corrupt(path, "bzip2 data ends before its end marker: truncated")


class _Payload:
    """Consumes a stream of chunks: skips ``offset`` bytes, then counts the payload bytes and,
    for floating-point data, the NaN/inf values among the first ``nbytes`` of them."""

    def __init__(self, offset: int, nbytes: int, dtype: np.dtype | None):
        self.offset, self.nbytes, self.dtype = offset, nbytes, dtype
        self.total = 0  # bytes seen, offset included
        self.nonfinite = 0
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        start = self.total
        self.total += len(chunk)
        if self.dtype is None:
            return
        lo = max(self.offset - start, 0)
        hi = min(self.offset + self.nbytes - start, len(chunk))
        if hi <= lo:
            return
        data = self._carry + chunk[lo:hi]
        n = len(data) - len(data) % self.dtype.itemsize
        self._carry = data[n:]
        if n:
            self.nonfinite += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:n], self.dtype))))

    def check(self, path: Path, what: str) -> None:
        need = self.offset + self.nbytes
        if self.total < need:
            raise _corrupt(path, f"truncated: the header promises {self.nbytes} bytes of voxel data"
                                 f"{f' after byte {self.offset}' if self.offset else ''}, the {what} "
                                 f"holds {max(self.total - self.offset, 0)}")


def _spacing_error(path: Path, spacing: Sequence[float], field: str) -> InputError | None:
    sp = [float(s) for s in spacing]
    if all(math.isfinite(s) and s > 0 for s in sp):
        return None
    return InputError(path, f"invalid voxel spacing ({', '.join(f'{s:.6g}' for s in sp)}) in the header ({field}): "
                            "every spacing must be finite and > 0 mm")


_NIFTI_DTYPES = {16: "f4", 64: "f8"}  # floating-point types whose NaN/inf ITK hides


def _check_nifti(path: Path) -> int:
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        chunks = iter(_inflate(f, path, members=True) if gz else _raw_chunks(f))
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= 540:
                break
        for endian in "<>":
            sizeof_hdr = struct.unpack(endian + "i", head[:4])[0] if len(head) >= 4 else 0
            if sizeof_hdr in (348, 540):
                break
        else:
            raise _corrupt(path, "no NIfTI header" if len(head) >= 348 else f"only {len(head)} bytes, "
                           "shorter than a NIfTI header")
        if len(head) < sizeof_hdr:
            raise _corrupt(path, f"truncated inside the {sizeof_hdr}-byte NIfTI header")
        if sizeof_hdr == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            pixdim = struct.unpack(endian + "8f", head[76:108])
            vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        else:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            pixdim = struct.unpack(endian + "8d", head[104:168])
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        ndim = dim[0]
        if not 1 <= ndim <= 7 or any(d < 0 for d in dim[1:ndim + 1]) or bitpix <= 0:
            raise _corrupt(path, f"NIfTI header holds dim {dim[:ndim + 1] if 0 <= ndim <= 7 else dim}, "
                                 f"bitpix {bitpix}")
        err = _spacing_error(path, pixdim[1:min(ndim, 3) + 1], "pixdim")
        if err:
            raise err
        offset = max(int(vox_offset) if math.isfinite(vox_offset) else 0, sizeof_hdr)
        nbytes = -(-math.prod(dim[1:ndim + 1]) * bitpix // 8)
        code = _NIFTI_DTYPES.get(datatype)
        dtype = np.dtype(endian + code) if code else None
        if not gz and dtype is None:  # integer .nii: the size on disk tells it all
            payload = _Payload(offset, nbytes, None)
            payload.total = os.fstat(f.fileno()).st_size
        else:
            payload = _Payload(offset, nbytes, dtype)
            payload.feed(head)
            for chunk in chunks:
                payload.feed(chunk)
    payload.check(path, "decompressed stream" if gz else "file")
    return payload.nonfinite


_META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
               "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
               "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _text_header(f: BinaryIO, path: Path, stop) -> list[tuple[str, str]]:
    """``key, value`` pairs of a text header read line by line until ``stop(key)`` (MetaImage
    ``key = value``) or, when ``stop`` is None, a blank line (nrrd ``key: value``; comments and
    ``key:=value`` pairs skipped); ``f`` is left at the first byte after the header."""
    fields = []
    seen = 0
    while seen < _HEADER_MAX:
        line = f.readline(_HEADER_MAX)
        if not line:
            break
        seen += len(line)
        text = line.decode("latin-1").strip()
        if stop is None and not text:
            return fields
        if text.startswith("#"):
            continue
        key, _, value = text.partition("=" if stop is not None else ":")
        if stop is None and value.startswith("="):
            continue
        fields.append((key.strip().lower(), value.strip()))
        if stop is not None and stop(key.strip().lower()):
            return fields
    raise _corrupt(path, "header not terminated")


def _check_meta(path: Path) -> None:
    with open(path, "rb") as f:
        h = dict(_text_header(f, path, lambda k: k == "elementdatafile"))
        data_start = f.tell()
        try:
            ndims = int(h.get("ndims", "0"))
            dims = [int(v) for v in h["dimsize"].split()][:ndims]
            spacing = (h.get("elementspacing") or h.get("elementsize"))
            spacing = [float(v) for v in spacing.split()][:ndims] if spacing else []
            nbytes = math.prod(dims) * _META_TYPES[h["elementtype"].upper()] * \
                int(h.get("elementnumberofchannels", "1"))
            compressed = h.get("compresseddata", "false").lower() == "true"
            header_size = int(h.get("headersize", "0"))
            datafile = h["elementdatafile"]
        except (KeyError, ValueError):
            return  # an incomplete header: SimpleITK reports it
        err = _spacing_error(path, spacing, "ElementSpacing")
        if err:
            raise err
        if datafile.upper() == "LOCAL":
            _check_payload(path, f, data_start, nbytes, compressed, 0, members=False)
            return
    if datafile.upper() == "LIST" or "%" in datafile or " " in datafile:
        return  # one file per slice: left to SimpleITK
    data = path.parent / datafile
    if not data.is_file():
        raise InputError(path, f"corrupt file (its data file {datafile} is missing)")
    with open(data, "rb") as f:
        _check_payload(data, f, 0, nbytes, compressed, header_size, members=False)


def _check_payload(path: Path, f: BinaryIO, start: int, nbytes: int, encoding: str | bool,
                   skip: int, members: bool) -> None:
    """Raw: the file must hold ``nbytes`` after ``start + skip`` (``skip`` -1: data at the end);
    compressed: the stream must decompress with its checks passing to at least ``nbytes``."""
    if encoding in (False, "raw"):
        size = os.fstat(f.fileno()).st_size - start
        payload = _Payload(0 if skip < 0 else skip, nbytes, None)
        payload.total = size
        payload.check(path, "file")
        return
    f.seek(start)
    payload = _Payload(0, nbytes, None)
    for chunk in (_bunzip(f, path) if encoding == "bzip2" else _inflate(f, path, members)):
        payload.feed(chunk)
    payload.check(path, "decompressed stream")


_NRRD_SIZES = {1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
               2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t",
                   "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
               4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                   "float"),
               8: ("longlong", "long long", "long long int", "signed long long", "signed long long int",
                   "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int",
                   "uint64", "uint64_t", "double")}
_NRRD_TYPE_BYTES = {name: n for n, names in _NRRD_SIZES.items() for name in names}
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}


def _check_nrrd(path: Path) -> None:
    with open(path, "rb") as f:
        if not f.readline(64).startswith(b"NRRD"):
            raise _corrupt(path, "no NRRD magic line")
        h = dict(_text_header(f, path, None))
        data_start = f.tell()
        try:
            dims = [int(v) for v in h["sizes"].split()]
            nbytes = math.prod(dims) * _NRRD_TYPE_BYTES[h["type"].lower()]
            encoding = _NRRD_ENCODINGS.get(h.get("encoding", "").lower())
            byte_skip = int(h.get("byte skip", h.get("byteskip", "0")))
            line_skip = int(h.get("line skip", h.get("lineskip", "0")))
        except (KeyError, ValueError):
            return  # an incomplete or unusual header: SimpleITK reports it
        spacing, field = [], "spacings"
        if "space directions" in h:
            vecs = re.findall(r"\(([^)]*)\)", h["space directions"])
            try:
                spacing = [math.sqrt(sum(float(x) ** 2 for x in v.split(","))) for v in vecs]
            except ValueError:
                spacing = [math.nan]
            field = "space directions"
        elif "spacings" in h:
            spacing = [float(v) if v.lower() != "nan" else math.nan for v in h["spacings"].split()]
        err = _spacing_error(path, spacing, field)
        if err:
            raise err
        if encoding is None or line_skip or (byte_skip and encoding != "raw"):
            return  # text encodings and skips: left to SimpleITK
        datafile = h.get("data file", h.get("datafile"))
        if datafile is None:
            _check_payload(path, f, data_start, nbytes, encoding, byte_skip, members=True)
            return
    if datafile.upper().startswith("LIST") or "%" in datafile or " " in datafile:
        return
    data = path.parent / datafile
    if not data.is_file():
        raise InputError(path, f"corrupt file (its data file {datafile} is missing)")
    with open(data, "rb") as f:
        _check_payload(data, f, 0, nbytes, encoding, byte_skip, members=True)


def verify_image_file(path: os.PathLike | str) -> int:
    """Check an image file's bytes against its header in one streaming pass; return the number of
    NaN/inf voxels of a floating-point NIfTI file (0 otherwise).

    * ``.nii.gz`` (any gzip-compressed NIfTI): full decompression in chunks, so a broken CRC or
      length trailer, a corrupted deflate stream or a truncated file is caught; the decompressed
      payload must hold at least ``vox_offset`` + the voxel bytes the header promises.
    * ``.nii``: the file size against the header (float files are streamed to count NaN/inf).
    * ``.mha``/``.mhd``: ``DimSize``/``ElementType``/``ElementNumberOfChannels`` against the
      ``LOCAL`` or single external data file, zlib-checked when ``CompressedData = True``.
    * ``.nrrd``: ``sizes``/``type`` against the attached or single detached data for ``raw``,
      ``gzip`` and ``bzip2`` encodings.
    * every format: the voxel spacing fields (NIfTI ``pixdim[1..3]``, ``ElementSpacing``, nrrd
      ``space directions``/``spacings``) must be finite and > 0.

    Raises :class:`InputError` with ``"corrupt file (...)"`` or ``"invalid voxel spacing ..."``.
    """
    p = Path(path)
    suffix = image_suffix(p)
    try:
        if suffix in (".nii", ".nii.gz"):
            return _check_nifti(p)
        if suffix in (".mha", ".mhd"):
            _check_meta(p)
        elif suffix == ".nrrd":
            _check_nrrd(p)
    except OSError as e:
        raise InputError(p, f"unreadable ({e.strerror or e})") from None
    return 0


def nifti_nonfinite_count(path: os.PathLike | str) -> int:
    """Number of NaN/inf voxels stored in a floating-point NIfTI file, read from the raw bytes.

    ITK's NIfTI reader silently turns NaN into 0, so checks on the SimpleITK array miss them.
    Integer ``.nii`` files cost only a header read. Returns 0 for other formats.  Raises
    :class:`InputError` for a corrupt file (see :func:`verify_image_file`).
    """
    return verify_image_file(path) if image_suffix(path) in (".nii", ".nii.gz") else 0


def read_image(path: os.PathLike | str) -> sitk.Image:
    """Read a ``.nii(.gz)``/``.mha``/``.mhd``/``.nrrd`` file or a DICOM series folder.

    Raises :class:`InputError` (naming the file) when it is missing or unreadable, when its bytes do
    not hold what its header promises (``"corrupt file (...)"``, see :func:`verify_image_file`),
    when a spacing is zero, negative or not finite, when a floating-point image holds NaN/inf
    voxels, when a DICOM series has missing slices or uneven slice positions
    (:func:`check_slice_positions`), and when the image is not 3-D or not scalar.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    nonfinite = 0
    try:
        if p.is_dir():
            img = _read_dicom_series(p)
        else:
            nonfinite = verify_image_file(p)
            img = sitk.ReadImage(str(p))
    except InputError:
        raise
    except RuntimeError as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        msg = next((ln.split("ERROR:", 1)[-1] for ln in lines if "ERROR:" in ln), lines[-1] if lines else "")
        raise InputError(p, f"unreadable ({msg.strip()[:160]})") from None
    if img.GetDimension() != 3:
        raise InputError(p, f"expected a 3-D image, got {img.GetDimension()}-D with size {img.GetSize()}")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(p, f"expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components per voxel")
    err = _spacing_error(p, img.GetSpacing(), "as SimpleITK reads it")
    if err:
        raise err
    if not nonfinite and img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        nonfinite = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(img))))
    if nonfinite:
        raise InputError(p, f"holds {nonfinite} NaN/inf voxels (non-finite values)")
    return img


#: DICOM slice positions may deviate from the series' typical slice spacing by this much (mm) or
#: this fraction of it, whichever is larger, before the series counts as non-uniform
SLICE_GAP_ATOL_MM = 0.01
SLICE_GAP_RTOL = 0.01


def check_slice_positions(positions: Sequence[float], names: Sequence[str] | None = None) -> str | None:
    """Why slices at ``positions`` (mm along the slice normal, in file order) do not form a uniform
    stack, or None when they do.

    The typical spacing is the median gap between neighbouring positions (sorted); a gap that
    differs from it by more than ``max(SLICE_GAP_ATOL_MM, SLICE_GAP_RTOL * typical)`` (0.01 mm or
    1 %: DICOM positions are often rounded to 0.01 mm, a missing slice doubles a gap) or two slices
    at one position make the series non-uniform.  Slices are numbered from 1 in sorted order.
    """
    pos = np.asarray(positions, dtype=float)
    if len(pos) < 3:
        return None
    order = np.argsort(pos, kind="stable")
    gaps = np.diff(pos[order])
    typical = float(np.median(gaps))
    names = list(names) if names is not None else None

    def label(i: int) -> str:
        return f" ({names[order[i]]}, {names[order[i + 1]]})" if names else ""

    dup = np.flatnonzero(gaps <= SLICE_GAP_ATOL_MM)
    if len(dup):
        i = int(dup[0])
        return (f"duplicate slice position: slices {i + 1} and {i + 2} of {len(pos)} both at "
                f"{pos[order[i]]:.4g} mm{label(i)}")
    bad = np.flatnonzero(np.abs(gaps - typical) > max(SLICE_GAP_ATOL_MM, SLICE_GAP_RTOL * typical))
    if not len(bad):
        return None
    i = int(bad[0])
    more = f"; {len(bad) - 1} more uneven gap(s)" if len(bad) > 1 else ""
    return (f"non-uniform slice spacing: gap of {gaps[i]:.4g} mm between slices {i + 1} and {i + 2} "
            f"of {len(pos)}{label(i)} where the rest are {typical:.4g} mm{more}")


def _dicom_vector(value: str) -> np.ndarray | None:
    try:
        v = np.array([float(x) for x in value.strip().split("\\")], dtype=float)
    except ValueError:
        return None
    return v if np.all(np.isfinite(v)) else None


def _read_dicom_series(p: Path) -> sitk.Image:
    """Read the largest DICOM series in folder ``p``; refuse missing slices / uneven positions.

    Positions are each file's ImagePositionPatient (0020|0032) projected on the normal of its
    ImageOrientationPatient (0020|0037), taken from the per-file metadata dictionaries the series
    reader fills while reading (no second parse of the files).  ITK's own "non uniform sampling"
    warning is silenced for the read: it reads such a series at a wrong spacing and only warns.
    """
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
        if not ids:
            raise InputError(p, "folder holds no DICOM series")
        # the series with the most files, as most viewers do
        files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), i) for i in ids), key=len)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        img = reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    positions = _slice_positions(reader, len(files))
    if positions is not None:
        why = check_slice_positions(positions, [Path(f).name for f in files])
        if why:
            raise InputError(p, why)
    return img


def _slice_positions(reader: sitk.ImageSeriesReader, n: int) -> list[float] | None:
    """Slice positions (mm along the slice normal) of the ``n`` files an executed series reader
    read, or None when a file lacks the position/orientation tags (the check is then left out)."""
    out = []
    for i in range(n):
        if not (reader.HasMetaDataKey(i, "0020|0032") and reader.HasMetaDataKey(i, "0020|0037")):
            return None
        ipp = _dicom_vector(reader.GetMetaData(i, "0020|0032"))
        iop = _dicom_vector(reader.GetMetaData(i, "0020|0037"))
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            return None
        normal = np.cross(iop[:3], iop[3:])
        norm = float(np.linalg.norm(normal))
        if not norm > 0:
            return None
        out.append(float(ipp @ normal) / norm)
    return out


def read_array(path: os.PathLike | str) -> tuple[np.ndarray, Geometry]:
    """Read an image as a ``(Z, Y, X)`` array plus its :class:`Geometry`."""
    img = read_image(path)
    return sitk.GetArrayFromImage(img), Geometry.of(img)


def geometry_mismatch(a: Geometry, b: Geometry, atol_mm: float = 1e-3, rtol: float = 1e-4,
                      direction_atol: float = 1e-4) -> list[str]:
    """Reasons why two grids differ (empty list if they agree within tolerance)."""
    out = []
    if a.size != b.size:
        out.append(f"size {a.size} != {b.size}")
        return out
    if not np.allclose(a.spacing, b.spacing, rtol=rtol, atol=atol_mm):
        out.append(f"spacing {_fmt(a.spacing)} != {_fmt(b.spacing)}")
    tol = max(atol_mm, 0.5 * min(a.spacing) * 1e-2)
    if not np.allclose(a.origin, b.origin, atol=tol, rtol=0):
        out.append(f"origin {_fmt(a.origin)} != {_fmt(b.origin)}")
    if not np.allclose(a.direction, b.direction, atol=direction_atol, rtol=0):
        out.append(f"direction {_fmt(a.direction)} != {_fmt(b.direction)}")
    return out


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


@functools.lru_cache(maxsize=None)
def _writer_host() -> str:
    """This machine as written into temp-file names: the host name (characters other than letters,
    digits and ``-`` made ``_``) plus the PID namespace where Linux tells it, so that containers
    sharing a host name (``--net=host``) but not their process ids never judge each other's temps."""
    host = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())[:40] or "host"
    with contextlib.suppress(OSError):
        host += f"_ns{os.stat('/proc/self/ns/pid').st_ino}"
    return host


_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp")
_cleaned_folders: set[str] = set()
_cleaned_lock = threading.Lock()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or a pid we cannot judge: keep its file
    return True


def remove_stale_temps(folder: os.PathLike | str, recursive: bool = False) -> list[Path]:
    """Remove the temp files :func:`atomic_path` left in ``folder`` when its writer was killed.

    Only temps whose name says they were written on this host (and PID namespace) by a process
    that no longer runs are removed: temps of live processes and of other hosts (sharded jobs share
    folders) stay, and so do files whose name does not follow the pattern.  A pid reused by an
    unrelated process keeps its temp until that process ends.  Returns the removed paths (each
    logged at INFO).  :func:`atomic_path` calls it on its first write into a folder in a process;
    commands and stages call it on their output folder at start (``recursive``: every subfolder),
    so a rerun that writes nothing still removes what a killed run left.
    """
    folder = Path(folder)
    if recursive:
        removed = []
        for sub, dirs, _ in os.walk(folder):
            dirs[:] = [d for d in dirs if not _TEMP_RE.match(d)]
            removed += remove_stale_temps(sub)
        return removed
    with _cleaned_lock:
        _cleaned_folders.add(str(folder.resolve()))
    removed = []
    host = _writer_host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if not m or m["host"] != host or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            if e.is_dir(follow_symlinks=False):  # a .mhd write's folder
                import shutil
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
            log.info("removed stale temp file %s (its writer, pid %s, is gone)", e.path, m["pid"])
    return removed


def _prepare_folder(dest: Path) -> None:
    """Create ``dest``'s folder; on the first write into it in this process, remove stale temps."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if str(dest.parent.resolve()) not in _cleaned_folders:
        remove_stale_temps(dest.parent)


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}.{_writer_host()}-{os.getpid()}."


@contextlib.contextmanager
def atomic_path(dest: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path next to ``dest`` (same suffix); rename onto ``dest`` on success.

    On any exception the temporary file is removed and ``dest`` is untouched.  The temporary file
    is named ``.<name>.<host>-<pid>.<random>.tmp<suffix>``; a process killed mid-write leaves it
    behind, and the first atomic write into that folder by a later process on this host removes it
    (:func:`remove_stale_temps`).  The file gets the permissions a plain ``open()`` would give
    (0666 minus the umask), not ``mkstemp``'s 0600, so outputs stay readable by other users (e.g.
    the host of a Docker run).
    """
    dest = Path(dest)
    _prepare_folder(dest)
    suffix = image_suffix(dest) or "".join(dest.suffixes[-1:])
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest), suffix=f".tmp{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_p = Path(tmp)
    try:
        yield tmp_p
        os.chmod(tmp_p, 0o666 & ~_umask())
        os.replace(tmp_p, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_p.unlink()
        raise


def _umask() -> int:
    """The process umask (read once: setting it to read it is not thread-safe)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def write_image(img: sitk.Image, dest: os.PathLike | str, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically.

    A ``.mhd`` header names its data file after itself, so it is written under its final name in a
    temporary folder next to ``dest``; the data file is moved into place first, the header last."""
    dest = Path(dest)
    if image_suffix(dest) != ".mhd":
        with atomic_path(dest) as tmp:
            sitk.WriteImage(img, str(tmp), useCompression=compress)
        return dest
    import shutil
    _prepare_folder(dest)
    tmpdir = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), suffix=".tmp", dir=dest.parent))
    try:
        sitk.WriteImage(img, str(tmpdir / dest.name), useCompression=compress)
        for f in sorted(tmpdir.iterdir(), key=lambda f: f.name == dest.name):  # header last
            os.chmod(f, 0o666 & ~_umask())
            os.replace(f, dest.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return dest


def write_array(arr: np.ndarray, geometry: Geometry, dest: os.PathLike | str,
                compress: bool = True) -> Path:
    """Write a ``(Z, Y, X)`` array with the given geometry atomically."""
    if tuple(arr.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {arr.shape} does not match geometry {geometry.shape_zyx} for {dest}")
    img = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(arr)))
    return write_image(img, dest, compress)


def link_or_copy(src: os.PathLike | str, dest: os.PathLike | str) -> Path:
    """Hard-link ``src`` at ``dest`` (copy across file systems), atomically."""
    import shutil
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return Path(dest)


def write_text(text: str, dest: os.PathLike | str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return Path(dest)


def write_json(obj: Any, dest: os.PathLike | str) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", dest)


def read_json(path: os.PathLike | str) -> Any:
    with open(path) as f:
        return json.load(f)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def file_digest(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex, first 16 chars)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()[:16]
