"""Check an image file's bytes against its header before SimpleITK reads it.

SimpleITK returns garbage or zeros, without an error, for a ``.nii.gz`` whose CRC is broken, whose
deflate stream is corrupted or that was cut short, and reads a header spacing of 0 as 1 mm.
:func:`verify_image_file` streams the file once (1 MiB chunks; zlib checks CRC and length) and
compares the payload with what the header promises, for NIfTI, MetaImage and NRRD.
"""
from __future__ import annotations

import math
import os
import re
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np

from flareseg.errors import InputError
from flareseg.image_check import size_problem
from flareseg.regular_file import open_regular

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
#: the files :func:`verify_image_file` checks and :func:`flareseg.io.read_image` reads: the image
#: suffixes plus a detached NRRD header (its data file beside it is not a case of its own)
READ_SUFFIXES = IMAGE_SUFFIXES + (".nhdr",)


def image_suffix(path: os.PathLike | str) -> str:
    """The image extension of ``path`` (``.nii.gz`` counts as one), or ``""`` for a folder/unknown."""
    name = Path(path).name.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


_CHUNK = 1 << 20
_HEADER_MAX = 1 << 20  # longest text header (mha/nrrd) read before calling the file corrupt
_GZIP_MAGIC = b"\x1f\x8b"
#: the most compressed bytes of empty gzip members accepted after a complete payload (the BGZF
#: end-of-file block is 28 bytes)
EMPTY_MEMBERS_MAX = 1 << 12


def _corrupt(path: Path, detail: str) -> InputError:
    return InputError(path, f"corrupt file ({detail})")


_ZLIB_ERRORS = {"incorrect data check": "checksum mismatch", "incorrect length check": "length mismatch"}


def _zlib_error(path: Path, e: zlib.error) -> InputError:
    detail = str(e).split("decompressing data: ", 1)[-1]
    return _corrupt(path, f"compressed data unreadable: {_ZLIB_ERRORS.get(detail, detail)}")


def _raw_chunks(f: BinaryIO) -> Iterator[bytes]:
    for b in iter(lambda: f.read(_CHUNK), b""):
        yield b


def _inflate(f: BinaryIO, path: Path, members: bool, complete: Callable[[], bool],
             starts: list[int] | None = None) -> Iterator[bytes]:
    """Decompressed bytes of the gzip or zlib stream starting at ``f``'s position, in chunks.

    zlib verifies the trailer (gzip: CRC-32 and length; zlib: Adler-32); a stream that ends before
    its trailer is reported as truncated.  With ``members`` (gzip files) further concatenated gzip
    members are read while the payload is incomplete (``complete()`` False).  Once the payload is
    complete, only *empty* gzip members may follow (they hold no data: the end-of-file block
    bgzip/htslib write, an empty ``gzip`` member), at most :data:`EMPTY_MEMBERS_MAX` bytes of them;
    a member that decompresses to anything, bytes that are not a gzip member, and anything after a
    zlib stream are trailing data: refused as soon as they are seen, never read in full (a small
    image followed by gigabytes of further members must not be read).  ``starts`` receives the
    decompressed offset at which each further member that holds data begins, so a caller that
    learns the payload size late (NIfTI: from the decompressed header) can tell a member that
    began after the payload.
    """
    d = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
    buf = b""
    seen = False
    produced = 0
    read = 0                    # compressed bytes read from ``f``
    member_at = 0               # where the current member began (compressed offset), if not the first
    member_out: int | None = None   # bytes the current further member produced (None: first member)
    empty_bytes = 0             # compressed bytes of further members that produced nothing
    tail = False                # the payload was complete when this member began

    def trailing(detail: str = "") -> InputError:
        return _corrupt(path, f"trailing data after the compressed image{detail}")
    while True:
        if not buf:
            buf = f.read(_CHUNK)
            read += len(buf)
            if not buf:
                break
            seen = True
        try:
            out = d.decompress(buf, _CHUNK)
        except zlib.error as e:
            raise _zlib_error(path, e) from None
        if member_out == 0 and not out and (empty_bytes + read - len(d.unconsumed_tail) - len(d.unused_data)
                                            - member_at) > EMPTY_MEMBERS_MAX:
            raise trailing(f" (gzip members that hold no data, more than {EMPTY_MEMBERS_MAX} bytes of them)")
        if out:
            if tail:
                raise trailing(" (another gzip member)")
            if member_out == 0 and starts is not None:
                starts.append(produced)
            if member_out is not None:
                member_out += len(out)
            produced += len(out)
            yield out
        buf = d.unconsumed_tail
        if d.eof:
            buf = d.unused_data
            if member_out == 0:
                empty_bytes += read - len(buf) - member_at
            if not buf:
                buf = f.read(_CHUNK)
                read += len(buf)
            if not buf:
                return
            while len(buf) < 2:
                more = f.read(_CHUNK)
                read += len(more)
                if not more:
                    break
                buf += more
            tail = complete()
            if not members or buf[:2] != _GZIP_MAGIC:
                raise (trailing(" (another gzip member)" if buf[:2] == _GZIP_MAGIC else "") if tail else
                       _corrupt(path, "trailing data after the compressed stream, before the voxel data "
                                      "is complete"))
            member_at, member_out = read - len(buf), 0
            d = zlib.decompressobj(32 + zlib.MAX_WBITS)
    try:
        out = d.flush()
    except zlib.error as e:
        raise _zlib_error(path, e) from None
    if out:
        if tail:
            raise trailing(" (another gzip member)")
        if member_out == 0 and starts is not None:
            starts.append(produced)
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
                if d.unused_data or f.read(1):
                    raise _corrupt(path, "trailing data after the compressed image")
                return
    if not d.eof:
        raise _corrupt(path, "bzip2 data ends before its end marker: truncated")


class _Payload:
    """Consumes a stream of chunks: skips ``offset`` bytes, then counts the payload bytes and,
    for floating-point data, the NaN/inf values among the first ``nbytes`` of them.

    The payload must be exactly ``nbytes``: a stream that goes on past it is refused as soon as
    the first byte too many arrives (:meth:`feed` raises), one that stops short by :meth:`check`.
    """

    def __init__(self, path: Path, offset: int, nbytes: int, dtype: np.dtype | None, what: str):
        self.path, self.offset, self.nbytes, self.dtype, self.what = path, offset, nbytes, dtype, what
        self.total = 0  # bytes seen, offset included
        self.nonfinite = 0
        self._carry = b""

    @property
    def complete(self) -> bool:
        return self.total >= self.offset + self.nbytes

    def _promise(self) -> str:
        return (f"the header promises {self.nbytes} bytes of voxel data"
                f"{f' after byte {self.offset}' if self.offset else ''}")

    def feed(self, chunk: bytes) -> None:
        start = self.total
        self.total += len(chunk)
        if self.total > self.offset + self.nbytes:
            raise _corrupt(self.path, f"payload larger than the header says: {self._promise()}, the "
                                      f"{self.what} holds more (at least {self.total - self.offset})")
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

    def check_size(self, size: int, at_least: bool = False) -> None:
        """Check a payload of ``size`` bytes (offset included) known without reading it;
        ``at_least``: only a shortfall is wrong (data placed at the end of the file)."""
        self.total = size
        need = self.offset + self.nbytes
        if size > need and not at_least:
            raise _corrupt(self.path, f"payload larger than the header says: {self._promise()}, the "
                                      f"{self.what} holds {size - self.offset}")
        self.check()

    def check(self) -> None:
        if not self.complete:
            raise _corrupt(self.path, f"truncated: {self._promise()}, the {self.what} holds "
                                      f"{max(self.total - self.offset, 0)}")


def _check_declared(path: Path, dims: Sequence[int], itemsize: int) -> None:
    """Refuse an image that declares more voxels than :func:`flareseg.image_check.max_image_voxels`,
    before any of its data is read."""
    why = size_problem(dims, itemsize)
    if why:
        raise InputError(path, why)


def spacing_error(path: Path, spacing: Sequence[float], field: str) -> InputError | None:
    sp = [float(s) for s in spacing]
    if all(math.isfinite(s) and s > 0 for s in sp):
        return None
    return InputError(path, f"invalid voxel spacing ({', '.join(f'{s:.6g}' for s in sp)}) in the header ({field}): "
                            "every spacing must be finite and > 0 mm")


_NIFTI_DTYPES = {16: "f4", 64: "f8"}  # floating-point types whose NaN/inf ITK hides


def _check_nifti(path: Path) -> int:
    with open_regular(path) as f:
        gz = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        holder: list[_Payload] = []
        starts: list[int] = []
        chunks = iter(_inflate(f, path, True, lambda: bool(holder) and holder[0].complete, starts) if gz
                      else _raw_chunks(f))
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
        err = spacing_error(path, pixdim[1:min(ndim, 3) + 1], "pixdim")
        if err:
            raise err
        _check_declared(path, dim[1:ndim + 1], -(-bitpix // 8))
        offset = max(int(vox_offset) if math.isfinite(vox_offset) else 0, sizeof_hdr)
        nbytes = -(-math.prod(dim[1:ndim + 1]) * bitpix // 8)
        code = _NIFTI_DTYPES.get(datatype)
        dtype = np.dtype(endian + code) if code else None
        payload = _Payload(path, offset, nbytes, dtype, "decompressed stream" if gz else "file")
        holder.append(payload)
        if not gz and dtype is None:  # integer .nii: the size on disk tells it all
            payload.check_size(os.fstat(f.fileno()).st_size)
            return 0
        payload.feed(head)
        for chunk in chunks:
            payload.feed(chunk)
    payload.check()
    if any(start >= offset + nbytes for start in starts):  # began while the header was being read
        raise _corrupt(path, "trailing data after the compressed image (another gzip member)")
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
    with open_regular(path) as f:
        h = dict(_text_header(f, path, lambda k: k == "elementdatafile"))
        data_start = f.tell()
        try:
            ndims = int(h.get("ndims", "0"))
            dims = [int(v) for v in h["dimsize"].split()][:ndims]
            spacing = (h.get("elementspacing") or h.get("elementsize"))
            spacing = [float(v) for v in spacing.split()][:ndims] if spacing else []
            itemsize = _META_TYPES[h["elementtype"].upper()] * int(h.get("elementnumberofchannels", "1"))
            nbytes = math.prod(dims) * itemsize
            compressed = h.get("compresseddata", "false").lower() == "true"
            header_size = int(h.get("headersize", "0"))
            datafile = h["elementdatafile"]
        except (KeyError, ValueError):
            return  # an incomplete header: SimpleITK reports it
        err = spacing_error(path, spacing, "ElementSpacing")
        if err:
            raise err
        _check_declared(path, dims, itemsize)
        if datafile.upper() == "LOCAL":
            _check_payload(path, f, data_start, nbytes, compressed, 0, members=False)
            return
    if datafile.upper() == "LIST" or "%" in datafile or " " in datafile:
        return  # one file per slice: left to SimpleITK
    data = _data_file(path, datafile)
    with open_regular(data) as f:
        _check_payload(data, f, 0, nbytes, compressed, header_size, members=False)


def _data_file(path: Path, datafile: str) -> Path:
    """The detached data file ``datafile`` named in header ``path``; it must exist."""
    data = path.parent / datafile
    if not data.exists():
        raise InputError(path, f"corrupt file (its data file {datafile} is missing)")
    return data


def _check_payload(path: Path, f: BinaryIO, start: int, nbytes: int, encoding: str | bool,
                   skip: int, members: bool) -> None:
    """Raw: the file must hold exactly ``nbytes`` after ``start + skip`` (``skip`` -1: the data
    is the last ``nbytes`` of the file, so only a shortfall can be seen); compressed: the stream
    must decompress, with its checks passing, to exactly ``nbytes`` and end the file."""
    if encoding in (False, "raw"):
        payload = _Payload(path, max(skip, 0), nbytes, None, "file")
        payload.check_size(os.fstat(f.fileno()).st_size - start, at_least=skip < 0)
        return
    f.seek(start)
    payload = _Payload(path, 0, nbytes, None, "decompressed stream")
    stream = _bunzip(f, path) if encoding == "bzip2" else _inflate(f, path, members, lambda: payload.complete)
    for chunk in stream:
        payload.feed(chunk)
    payload.check()


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
    with open_regular(path) as f:
        if not f.readline(64).startswith(b"NRRD"):
            raise _corrupt(path, "no NRRD magic line")
        h = dict(_text_header(f, path, None))
        data_start = f.tell()
        try:
            dims = [int(v) for v in h["sizes"].split()]
            itemsize = _NRRD_TYPE_BYTES[h["type"].lower()]
            nbytes = math.prod(dims) * itemsize
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
        err = spacing_error(path, spacing, field)
        if err:
            raise err
        _check_declared(path, dims, itemsize)
        if encoding is None or line_skip or (byte_skip and encoding != "raw"):
            return  # text encodings and skips: left to SimpleITK
        datafile = h.get("data file", h.get("datafile"))
        if datafile is None:
            _check_payload(path, f, data_start, nbytes, encoding, byte_skip, members=True)
            return
    if datafile.upper().startswith("LIST") or "%" in datafile or " " in datafile:
        return
    data = _data_file(path, datafile)
    with open_regular(data) as f:
        _check_payload(data, f, 0, nbytes, encoding, byte_skip, members=True)


def unsupported_format(path: os.PathLike | str) -> InputError | None:
    """The error for a file whose format :func:`verify_image_file` cannot check, or None."""
    name = Path(path).name.lower()
    if name.endswith(READ_SUFFIXES):
        return None
    return InputError(path, f"unsupported image format: flareseg reads {', '.join(READ_SUFFIXES)} files "
                            "and DICOM series folders")


def verify_image_file(path: os.PathLike | str) -> int:
    """Check an image file's bytes against its header in one streaming pass; return the number of
    NaN/inf voxels of a floating-point NIfTI file (0 otherwise).

    * ``.nii.gz`` (any gzip-compressed NIfTI): full decompression in chunks, so a broken CRC or
      length trailer, a corrupted deflate stream or a truncated file is caught; the decompressed
      payload must hold at least ``vox_offset`` + the voxel bytes the header promises.
    * ``.nii``: the file size against the header (float files are streamed to count NaN/inf).
    * ``.mha``/``.mhd``: ``DimSize``/``ElementType``/``ElementNumberOfChannels`` against the
      ``LOCAL`` or single external data file, zlib-checked when ``CompressedData = True``.
    * ``.nrrd``/``.nhdr``: ``sizes``/``type`` against the attached or single detached data for
      ``raw``, ``gzip`` and ``bzip2`` encodings.
    * any other suffix: nothing is checked (:func:`flareseg.io.read_image` refuses to read it).
    * every payload must be exactly what the header promises: a shorter one is ``truncated``, a
      longer one ``payload larger than the header says``, bytes or gzip members after a compressed
      stream ``trailing data``, refused as soon as they are seen (never read in full).
    * the declared size (voxels) must be within :func:`flareseg.image_check.max_image_voxels`,
      checked on the header before any data is decompressed.
    * only regular files are opened (:func:`open_regular`).
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
        elif suffix == ".nrrd" or p.name.lower().endswith(".nhdr"):
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
