"""Read a DICOM series folder, refusing what ITK/GDCM would read wrongly without an error.

* missing slices and uneven positions: ITK reads them at a wrong spacing and only warns; here the
  positions are checked and such a series is an :class:`InputError` naming the gap;
* several series in one folder: refused, naming each (UID, slices, description), unless one is
  picked (``series=UID``, ``--series UID``);
* a single 2-D slice: refused (ITK would make it a volume with an invented 1 mm slice spacing);
* a FIFO, device or unreadable file in the folder: refused (GDCM drops such files silently);
* a series declaring more voxels than the ceiling of :mod:`flareseg.image_check`: refused unread.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from flareseg.errors import InputError
from flareseg.regular_file import file_kind
from flareseg.image_check import size_problem


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


#: environment variable holding the SeriesInstanceUID(s) (space-separated) that ``--series`` picks;
#: set by :func:`with_series` for one command, so worker processes inherit it
SERIES_ENV = "FLARESEG_DICOM_SERIES"


#: the most series a refusal names (the rest are counted)
MAX_SERIES_NAMED = 10


@dataclass(frozen=True)
class Series:
    """One DICOM series of a folder: its SeriesInstanceUID, files (GDCM's order) and description."""
    uid: str
    files: tuple[str, ...]
    description: str

    def __str__(self) -> str:
        return f"{self.uid or '<no UID>'} ({len(self.files)} slices, {self.description or 'no description'!r})"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _folder_files(p: Path) -> tuple[list[Path], list[str]]:
    """(regular files, problems) of folder ``p``'s own entries: a FIFO, device or socket, or a file
    that cannot be opened, is a problem (GDCM drops such files silently, or blocks on them).
    Sub-folders are not part of the series.  Raises InputError when ``p`` cannot be listed."""
    try:
        entries = sorted(os.scandir(p), key=lambda e: e.name)
    except OSError as e:
        raise InputError(p, f"cannot list the folder ({e.strerror or e})") from None
    files, problems = [], []
    for e in entries:
        try:
            st = os.stat(e.path)
        except OSError as err:
            problems.append(f"{e.name}: {err.strerror or err}")
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{e.name} is {file_kind(st.st_mode)}, not a regular file")
            continue
        try:
            os.close(os.open(e.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
        except OSError as err:
            problems.append(f"{e.name}: cannot be read ({err.strerror or err})")
            continue
        files.append(Path(e.path))
    return files, problems


def list_series(p: Path) -> list[Series]:
    """The DICOM series of folder ``p`` (its own files, not sub-folders), largest first.  Raises
    InputError when the folder cannot be listed or holds a file that is not a readable regular file."""
    _, problems = _folder_files(p)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(p, f"{problems[0]}{more}: a DICOM folder must hold only readable regular files")
    with _quiet():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
        out = [Series(uid, tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), uid)), "") for uid in ids]
    return sorted((Series(s.uid, s.files, _description(s.files[0])) if s.files else s for s in out),
                  key=lambda s: (-len(s.files), s.uid))


def _description(file: str) -> str:
    """SeriesDescription (0008,103E) of a DICOM file, or ""."""
    r = sitk.ImageFileReader()
    r.SetFileName(file)
    try:
        with _quiet():
            r.ReadImageInformation()
        return r.GetMetaData("0008|103e").strip() if r.HasMetaDataKey("0008|103e") else ""
    except RuntimeError:
        return ""


def is_dicom_dir(path: os.PathLike | str) -> bool:
    """True for a folder holding a DICOM series among its regular files (GDCM's warning for other
    folders is silenced; a FIFO or device there is never opened: GDCM looks at a temporary folder
    of links to the regular files only).  False for a folder that cannot be listed."""
    p = Path(path)
    if not p.is_dir():
        return False
    try:
        files, problems = _folder_files(p)
    except InputError:
        return False
    with _quiet():
        if not problems:
            return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))
        with tempfile.TemporaryDirectory(prefix="flareseg-dicom-") as tmp:
            for f in files:
                os.symlink(f.resolve(), Path(tmp) / f.name)
            return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(tmp))


def selected_series() -> list[str]:
    """The SeriesInstanceUIDs ``--series`` picked for this command (:data:`SERIES_ENV`)."""
    return os.environ.get(SERIES_ENV, "").split()


def with_series(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command's ``func(args)`` so that ``args.series`` (the ``--series UID`` values) picks
    the series of every multi-series DICOM folder the command reads (set in :data:`SERIES_ENV` for
    the call, so worker processes see it too, and restored afterwards)."""
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        uids = getattr(args, "series", None) or []
        old = os.environ.get(SERIES_ENV)
        if uids:
            os.environ[SERIES_ENV] = " ".join(uids)
        try:
            return func(args)
        finally:
            if uids:
                if old is None:
                    os.environ.pop(SERIES_ENV, None)
                else:
                    os.environ[SERIES_ENV] = old
    return run


def pick_series(p: Path, series: str | Sequence[str] | None = None) -> Series:
    """The series of folder ``p`` to read: its only one, or the one among several whose UID is in
    ``series`` (default: :func:`selected_series`).  Raises InputError for a folder without a series,
    and for several series none of which is picked (each named with its slices and description)."""
    found = list_series(p)
    if not found:
        raise InputError(p, "folder holds no DICOM series")
    if len(found) == 1:
        return found[0]
    wanted = [series] if isinstance(series, str) else list(series if series is not None else selected_series())
    hits = [s for s in found if s.uid in wanted]
    if len(hits) == 1:
        return hits[0]
    names = "; ".join(str(s) for s in found[:MAX_SERIES_NAMED])
    if len(found) > MAX_SERIES_NAMED:
        names += f"; and {len(found) - MAX_SERIES_NAMED} more"
    hint = "--series names more than one of them" if hits else "pick one with --series UID (API: series=UID)"
    raise InputError(p, f"{len(found)} DICOM series in one folder: {names}; {hint}")


def read_dicom_series(p: Path, series: str | Sequence[str] | None = None) -> sitk.Image:
    """Read the DICOM series in folder ``p`` (see :func:`pick_series`); refuse missing slices and
    uneven positions, a single 2-D slice, and a series larger than the voxel ceiling.

    Positions are each file's ImagePositionPatient (0020|0032) projected on the normal of its
    ImageOrientationPatient (0020|0037), taken from the per-file metadata dictionaries the series
    reader fills while reading (no second parse of the files).  ITK's own "non uniform sampling"
    warning is silenced for the read: it reads such a series at a wrong spacing and only warns.
    """
    chosen = pick_series(p, series)
    files = list(chosen.files)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    with _quiet():
        first.ReadImageInformation()
    size = first.GetSize()
    dims = (*size[:2], (size[2] if len(size) > 2 else 1) * len(files))
    why = size_problem(dims, 2)
    if why:
        raise InputError(p, why)
    if dims[2] == 1:
        raise InputError(p, f"a single 2-D DICOM slice ({dims[0]} x {dims[1]}), not a 3-D volume: "
                            "a volume needs its slices, which give the slice spacing")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    with _quiet():
        img = reader.Execute()
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


def add_series_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--series UID`` (repeatable) to a command's parser and wrap its ``func`` default with
    :func:`with_series`, so the pick reaches every DICOM read of the command."""
    parser.add_argument("--series", action="append", default=None, metavar="UID",
                        help="SeriesInstanceUID of the series to read from a DICOM folder holding several "
                             "(repeatable, one per such folder; a folder with several series is refused "
                             "without it, naming each series with its slices and description)")
    parser.set_defaults(func=with_series(parser.get_default("func")))
