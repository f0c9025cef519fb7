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
import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from flareseg import dicom
from flareseg.dicom import read_dicom_series
from flareseg.errors import InputError
from flareseg.file_check import image_suffix, spacing_error, unsupported_format, verify_image_file
from flareseg.regular_file import file_kind, open_regular, require_regular, stat_path
from flareseg.temp_names import TEMP_RE, temp_path, writer_host
from flareseg.image_check import nonfinite_problem, size_problem

log = logging.getLogger(__name__)



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


def strip_suffix(path: os.PathLike | str) -> str:
    name = Path(path).name
    s = image_suffix(name)
    return name[: len(name) - len(s)] if s else name


def is_dicom_dir(path: os.PathLike | str) -> bool:
    """True for a folder holding a DICOM series (:func:`flareseg.dicom.is_dicom_dir`)."""
    return dicom.is_dicom_dir(path)


def read_image(path: os.PathLike | str, series: str | Sequence[str] | None = None) -> sitk.Image:
    """Read a ``.nii(.gz)``/``.mha``/``.mhd``/``.nrrd``/``.nhdr`` file or a DICOM series folder: the
    one verified read path of flareseg (docs/reliability.md, "Verify what is read"); any other
    format is refused, since its bytes could not be checked against its header.

    ``series``: the SeriesInstanceUID(s) that pick one series of a DICOM folder holding several
    (default: those of ``--series``, :func:`flareseg.dicom.selected_series`).

    Raises :class:`InputError` (naming the file) when it is missing, a broken symlink or a symlink
    loop, not a regular file (a FIFO or device is never opened), unreadable, larger than the voxel
    ceiling (:func:`flareseg.image_check.max_image_voxels`, checked on the header before any data is
    decompressed), when its bytes do not hold exactly what its header promises (``"corrupt file
    (...)"``: too short, too long, trailing data; see :func:`flareseg.file_check.verify_image_file`),
    when a spacing is zero, negative or not finite, when a floating-point image holds NaN/inf
    voxels, for the DICOM refusals of :func:`flareseg.dicom.read_dicom_series` (missing slices or
    uneven positions, several series, one 2-D slice, a non-regular or unreadable file), and when
    the image is not 3-D or not scalar.
    """
    p = Path(path)
    st = stat_path(p)
    nonfinite = 0
    try:
        if stat.S_ISDIR(st.st_mode):
            img = read_dicom_series(p, series)
        else:
            require_regular(p, "an image file or a DICOM series folder")
            unsupported = unsupported_format(p)
            if unsupported:
                raise unsupported
            nonfinite = verify_image_file(p)
            img = _read_file(p)
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
    err = spacing_error(p, img.GetSpacing(), "as SimpleITK reads it")
    if err:
        raise err
    if not nonfinite and img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        nonfinite = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(img))))
    why = nonfinite_problem(nonfinite)
    if why:
        raise InputError(p, why)
    return img


def _read_file(p: Path) -> sitk.Image:
    """SimpleITK's read of a checked file, after its header's size is checked against the voxel
    ceiling (for every format ITK reads, including those :mod:`flareseg.file_check` does not parse)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.ReadImageInformation()
    one_voxel = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())
    why = size_problem((*reader.GetSize(), reader.GetNumberOfComponents()),
                       sitk.GetArrayViewFromImage(one_voxel).itemsize)
    if why:
        raise InputError(p, why)
    return reader.Execute()


def read_array(path: os.PathLike | str) -> tuple[np.ndarray, Geometry]:
    """Read an image as a ``(Z, Y, X)`` array plus its :class:`Geometry`."""
    img = read_image(path)
    return sitk.GetArrayFromImage(img), Geometry.of(img)


#: label/image (and prediction/reference) grids agree when the spacing differs by at most this
#: fraction, each origin coordinate by at most this fraction of the voxel spacing along that axis
#: (nnU-Net's integrity check only warns about origin differences; 5 % of a voxel moves no voxel
#: centre anywhere near a neighbour), and the direction cosines by at most this much
GEOMETRY_SPACING_RTOL = 1e-4
GEOMETRY_ORIGIN_TOL_VOXELS = 0.05
GEOMETRY_DIRECTION_ATOL = 1e-4
#: ``import --copy-image-geometry`` copies the image's geometry onto a label only when doing so
#: moves no corner of the label's grid by more than this many voxels (half a voxel: every label
#: voxel keeps the image voxel it overlaps most)
COPY_GEOMETRY_MAX_VOXELS = 0.5


def geometry_mismatch(a: Geometry, b: Geometry, atol_mm: float = 1e-3, rtol: float = GEOMETRY_SPACING_RTOL,
                      direction_atol: float = GEOMETRY_DIRECTION_ATOL) -> list[str]:
    """Reasons why two grids differ (empty list if they agree within tolerance): size exactly,
    spacing within ``rtol`` (and ``atol_mm``), origin within :data:`GEOMETRY_ORIGIN_TOL_VOXELS` of
    the voxel spacing per axis (at least ``atol_mm``), direction within ``direction_atol``.
    Values are printed with enough digits to tell them apart, with the largest difference."""
    out = []
    if a.size != b.size:
        out.append(f"size {a.size} != {b.size}")
        return out
    if not np.allclose(a.spacing, b.spacing, rtol=rtol, atol=atol_mm):
        out.append(_differ("spacing", a.spacing, b.spacing, "mm"))
    tol = np.maximum(atol_mm, GEOMETRY_ORIGIN_TOL_VOXELS * np.asarray(a.spacing, float))
    if np.any(np.abs(np.subtract(a.origin, b.origin)) > tol):
        out.append(_differ("origin", a.origin, b.origin, "mm"))
    if not np.allclose(a.direction, b.direction, atol=direction_atol, rtol=0):
        out.append(_differ("direction", a.direction, b.direction, ""))
    return out


def grid_shift_voxels(a: Geometry, b: Geometry) -> float:
    """Largest distance, in voxels of ``a`` (per axis), between where a corner voxel of the grid
    lies under geometry ``a`` and under geometry ``b`` (same size): how far giving an image of grid
    ``b`` the geometry ``a`` moves it.  ``inf`` when the sizes differ."""
    if a.size != b.size:
        return float("inf")
    n = len(a.size)
    corners = np.array(np.meshgrid(*[(0, s - 1) for s in a.size], indexing="ij")).reshape(n, -1)

    def physical(g: Geometry) -> np.ndarray:
        d = np.asarray(g.direction, float).reshape(n, n)
        return np.asarray(g.origin, float)[:, None] + d @ (corners * np.asarray(g.spacing, float)[:, None])

    da = np.asarray(a.direction, float).reshape(n, n)
    shift = da.T @ (physical(b) - physical(a)) / np.asarray(a.spacing, float)[:, None]
    return float(np.abs(shift).max())


def copyable_geometry(image: Geometry, label: Geometry) -> str | None:
    """Why ``image``'s geometry may not be copied onto ``label`` (``import --copy-image-geometry``),
    or None when it may: same size and no label grid corner moved by more than
    :data:`COPY_GEOMETRY_MAX_VOXELS` voxels."""
    if image.size != label.size:
        return f"size {label.size} != {image.size}"
    shift = grid_shift_voxels(image, label)
    if shift <= COPY_GEOMETRY_MAX_VOXELS:
        return None
    return (f"copying the image's geometry would move the label by {shift:.3g} voxels, more than "
            f"{COPY_GEOMETRY_MAX_VOXELS:g}")


def _differ(what: str, a, b, unit: str) -> str:
    """``what (a) != (b)``, with the digits that tell them apart and the largest difference."""
    diff = float(np.max(np.abs(np.subtract(a, b))))
    apart = [i for i, (x, y) in enumerate(zip(a, b)) if abs(x - y) > 1e-9 * max(1.0, abs(x))]
    for digits in range(4, 13):
        if all(f"{a[i]:.{digits}g}" != f"{b[i]:.{digits}g}" for i in apart):
            break
    sa, sb = _fmt(a, digits), _fmt(b, digits)
    return f"{what} {sa} != {sb} (largest difference {diff:.3g}{' ' + unit if unit else ''})"


def _fmt(v, digits: int = 4) -> str:
    return "(" + ", ".join(f"{x:.{digits}g}" for x in v) + ")"


_writer_host = writer_host
_TEMP_RE = TEMP_RE
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


class WriteFailed(OSError):
    """A write whose result did not verify (SimpleITK reports no "no space left"): one line naming
    the file; the real name was not touched."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


@contextlib.contextmanager
def atomic_path(dest: os.PathLike | str, verify: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``dest`` (same suffix); verify it, then rename onto ``dest``.

    ``verify(tmp)`` returns why the written file is broken (or None); a broken file raises
    :class:`WriteFailed` and never reaches ``dest`` (SimpleITK writes 0-byte or truncated files
    on a full disk without an error).  Without ``verify`` the file must exist as a regular file.
    On any exception the temporary file is removed and ``dest`` is untouched; after the rename no
    temp is left whatever the rename did (renaming a hard link onto another link of the same file
    does nothing under POSIX, so the temp is unlinked).  The temporary file is named
    ``.<name>.<host>-<pid>.<random>.tmp<suffix>``; a process killed mid-write leaves it behind, and
    the first atomic write into that folder by a later process on this host removes it
    (:func:`remove_stale_temps`).  The file gets the permissions a plain ``open()`` would give
    (0666 minus the umask), not ``mkstemp``'s 0600, so outputs stay readable by other users (e.g.
    the host of a Docker run).  A file renamed into a folder guarded by
    :func:`flareseg.write_guard.recording` is recorded in its ledger.
    """
    from flareseg import write_guard
    dest = Path(dest)
    write_guard.check_replace(dest)   # never a file the guarded command did not write
    _prepare_folder(dest)
    suffix = image_suffix(dest) or "".join(dest.suffixes[-1:])
    # the temp goes when the block ends: on any exception, and after the rename too (still there
    # when tmp and dest were links to one file)
    with temp_path(dest, suffix) as tmp_p:
        yield tmp_p
        _verify_written(tmp_p, dest, verify)
        os.chmod(tmp_p, 0o666 & ~_umask())
        write_guard.note_written(dest, tmp_p)   # the ledger line first: a rename keeps size, mtime, inode
        os.replace(tmp_p, dest)


def _verify_written(tmp: Path, dest: Path, verify: Callable[[Path], str | None] | None) -> None:
    """Raise :class:`WriteFailed` naming ``dest`` unless ``tmp`` is a regular file that passes
    ``verify``."""
    import errno
    import stat
    try:
        st = os.lstat(tmp)
    except OSError:
        st = None
    why = None if st is not None and stat.S_ISREG(st.st_mode) else "no file was written"
    if why is None and verify is not None:
        why = verify(tmp)
    if why:
        raise WriteFailed(errno.EIO, f"write failed, {why} (is the disk full?); nothing was written under "
                                     "this name", str(dest))


def _image_problem(path: Path) -> str | None:
    """Why a just-written image file is broken (empty, or its payload short of its header)."""
    if os.path.getsize(path) == 0:
        return "the written file is empty"
    try:
        verify_image_file(path)
    except InputError as e:
        return f"the written file does not read back ({e.reason})"
    except OSError as e:
        return f"the written file does not read back ({e.strerror or e})"
    return None


def _size_is(n: int) -> Callable[[Path], str | None]:
    def check(path: Path) -> str | None:
        got = os.path.getsize(path)
        return None if got == n else f"{got} of {n} bytes written"
    return check


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
        with atomic_path(dest, verify=_image_problem) as tmp:
            sitk.WriteImage(img, str(tmp), useCompression=compress)
        return dest
    from flareseg import write_guard
    write_guard.check_replace(dest)
    _prepare_folder(dest)
    with temp_path(dest, "", folder=True) as tmpdir:
        sitk.WriteImage(img, str(tmpdir / dest.name), useCompression=compress)
        _verify_written(tmpdir / dest.name, dest, _image_problem)
        for f in tmpdir.iterdir():   # the data file too: never onto a file the guarded command did not write
            write_guard.check_replace(dest.parent / f.name)
        for f in sorted(tmpdir.iterdir(), key=lambda f: f.name == dest.name):  # header last
            os.chmod(f, 0o666 & ~_umask())
            write_guard.note_written(dest.parent / f.name, f)
            os.replace(f, dest.parent / f.name)
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
    with atomic_path(dest, verify=_size_is(os.path.getsize(src))) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return Path(dest)


def write_text(text: str, dest: os.PathLike | str) -> Path:
    """Write ``text`` (UTF-8) atomically; the written size is checked before the rename."""
    data = text.encode()
    with atomic_path(dest, verify=_size_is(len(data))) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_bytes(data: bytes, dest: os.PathLike | str) -> Path:
    """Write ``data`` atomically; the written size is checked before the rename."""
    with atomic_path(dest, verify=_size_is(len(data))) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_json(obj: Any, dest: os.PathLike | str) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", dest)


def read_json(path: os.PathLike | str) -> Any:
    """Parse a JSON file.  A missing file or a folder raises OSError as ``open`` does; a FIFO or
    device raises :class:`InputError` unopened (it would block or never end)."""
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):   # a folder: IsADirectoryError, as before
        raise InputError(path, f"is {file_kind(mode)}, not a regular file: only regular files are read")
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
    """sha256 of a file's bytes (hex, first 16 chars); a FIFO or device is refused unopened
    (:class:`InputError`, :func:`flareseg.file_check.open_regular`)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()[:16]
