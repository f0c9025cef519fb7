"""Read a DICOM series folder, refusing missing slices and uneven slice positions.

ITK reads a series with a lost slice at a wrong spacing and only prints a warning; here the
positions of the files are checked and such a series is an :class:`InputError` naming the gap.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from flareseg.errors import InputError


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


def read_dicom_series(p: Path) -> sitk.Image:
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
