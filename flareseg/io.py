"""Image and file I/O with geometry, atomic writes and input validation.

Arrays are numpy ``(Z, Y, X)``; :class:`Geometry` keeps SimpleITK's ``(x, y, z)`` order for
spacing/origin/direction and offers ``spacing_zyx`` for numpy code.  Every write goes to a
temporary file in the destination folder that is renamed into place, so an interrupted run never
leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


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


def read_image(path: os.PathLike | str) -> sitk.Image:
    """Read a ``.nii(.gz)``/``.mha``/``.nrrd`` file or a DICOM series folder.

    Raises :class:`InputError` (naming the file) when unreadable, not 3-D, or not scalar.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    try:
        if p.is_dir():
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
            if not ids:
                raise InputError(p, "folder holds no DICOM series")
            if len(ids) > 1:
                # take the series with the most files, as most viewers do
                ids = sorted(ids, key=lambda i: -len(
                    sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), i)))
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), ids[0]))
            img = reader.Execute()
        else:
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
    return img


def nifti_nonfinite_count(path: os.PathLike | str) -> int:
    """Number of NaN/inf voxels stored in a floating-point NIfTI file, read from the raw bytes.

    ITK's NIfTI reader silently turns NaN into 0, so checks on the SimpleITK array miss them.
    Integer NIfTI files (the usual CT) cost only a header read. Returns 0 for other formats.
    """
    import gzip
    import struct

    p = Path(path)
    suffix = image_suffix(p)
    if suffix not in (".nii", ".nii.gz"):
        return 0
    opener = gzip.open if suffix == ".nii.gz" else open
    with opener(p, "rb") as f:
        hdr = f.read(348)
        if len(hdr) < 348:
            return 0
        endian = "<" if struct.unpack("<i", hdr[:4])[0] == 348 else ">"
        datatype = struct.unpack(endian + "h", hdr[70:72])[0]
        dtypes = {16: "f4", 64: "f8"}
        if datatype not in dtypes:
            return 0
        vox_offset = int(struct.unpack(endian + "f", hdr[108:112])[0])
        f.read(max(0, vox_offset - 348))
        data = np.frombuffer(f.read(), dtype=endian + dtypes[datatype])
    return int((~np.isfinite(data)).sum())


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


@contextlib.contextmanager
def atomic_path(dest: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path next to ``dest`` (same suffix); rename onto ``dest`` on success.

    On any exception the temporary file is removed and ``dest`` is untouched.  The file gets the
    permissions a plain ``open()`` would give (0666 minus the umask), not ``mkstemp``'s 0600, so
    outputs stay readable by other users (e.g. the host of a Docker run).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = image_suffix(dest) or "".join(dest.suffixes[-1:])
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{suffix}", dir=dest.parent)
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
    """Write a SimpleITK image atomically."""
    with atomic_path(dest) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
    return Path(dest)


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
