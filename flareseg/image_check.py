"""The limits an input CT must meet, in one place: import (``flareseg.data.validate``) and the
predictor (``flareseg.inference.predictor``) check the same named limits with the same messages.

Voxel spacing: every axis in :data:`SPACING_RANGE_MM` (0.1 to 20 mm, docs/reliability.md: thinner
than 0.1 mm is a header in the wrong unit, thicker than 20 mm is not a volume to segment; 12-20
mm slabs are rare but real, and what predicts must also import).  Shape: a non-empty 3-D volume.
Values: no NaN/inf (:data:`ALLOW_NONFINITE` is False), and not one constant value.  Size: at most
:data:`MAX_IMAGE_VOXELS` voxels declared (env ``FLARESEG_MAX_IMAGE_VOXELS``), checked before any
data is decompressed.  CT plausibility: most voxels within :data:`CT_HU_RANGE` (images only).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

#: accepted voxel spacing in mm, every axis, both ends included
SPACING_RANGE_MM = (0.1, 20.0)
#: dimensions of an image volume
IMAGE_NDIM = 3
#: NaN/inf voxels are refused (they would poison normalisation and every softmax downstream)
ALLOW_NONFINITE = False


def spacing_problem(spacing: Sequence[float]) -> str | None:
    """Why ``spacing`` (mm, any axis order) is refused, or None."""
    lo, hi = SPACING_RANGE_MM
    sp = [float(s) for s in spacing]
    if all(np.isfinite(s) and lo <= s <= hi for s in sp):
        return None
    return f"spacing {tuple(round(s, 4) for s in sp)} mm outside the accepted range [{lo}, {hi}] mm"


def shape_problem(shape: Sequence[int]) -> str | None:
    """Why an array of ``shape`` is not an image volume, or None."""
    if len(shape) != IMAGE_NDIM or min(shape) < 1:
        return f"expected a non-empty {IMAGE_NDIM}-D volume, got shape {tuple(shape)}"
    return None


def nonfinite_count(arr: np.ndarray) -> int:
    """NaN/inf voxels of ``arr`` (0 for integer types)."""
    if not np.issubdtype(arr.dtype, np.floating):
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def nonfinite_problem(n: int) -> str | None:
    """The message for ``n`` NaN/inf voxels, or None when there are none (or they are allowed)."""
    if n == 0 or ALLOW_NONFINITE:
        return None
    return f"holds {n} NaN/inf voxels (non-finite values)"


def constant_problem(arr: np.ndarray) -> str | None:
    """Why a (finite) image of one value cannot be segmented, or None."""
    if arr.size and arr.min() == arr.max():
        return f"image is constant ({arr.flat[0]}): nothing to segment"
    return None


#: most voxels an image file may declare (x * y * z * channels), checked on the header before any
#: data is decompressed: 1024 x 1024 x 2048, more than any CT (a whole-body 512 x 512 scan at
#: 0.5 mm slices has ~4000 slices = 1.0e9 voxels).  Override with the environment variable
#: :data:`MAX_IMAGE_VOXELS_ENV` (a positive integer).
MAX_IMAGE_VOXELS = 1024 * 1024 * 2048
MAX_IMAGE_VOXELS_ENV = "FLARESEG_MAX_IMAGE_VOXELS"


def max_image_voxels() -> int:
    """The voxel ceiling in force: ``$FLARESEG_MAX_IMAGE_VOXELS`` when set (a positive integer;
    anything else raises ValueError naming the variable), else :data:`MAX_IMAGE_VOXELS`."""
    raw = os.environ.get(MAX_IMAGE_VOXELS_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_VOXELS
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{MAX_IMAGE_VOXELS_ENV}={raw[:40]!r}: expected a positive integer number of voxels")
    return n


def size_problem(dims: Sequence[int], itemsize: int) -> str | None:
    """Why an image declaring ``dims`` voxels of ``itemsize`` bytes is too large to read, or None."""
    limit = max_image_voxels()
    n = math.prod(int(d) for d in dims)
    if n <= limit:
        return None
    size = " x ".join(str(int(d)) for d in dims)
    return (f"image too large: the header declares {size} = {n} voxels ({n * itemsize / 2**30:.1f} GiB), "
            f"more than the limit of {limit} voxels (set {MAX_IMAGE_VOXELS_ENV} to raise it)")


#: CT plausibility (images, not labels), on values after the file's rescale (HU): at least
#: :data:`CT_MIN_FRACTION_IN_RANGE` of the voxels must lie in :data:`CT_HU_RANGE`.  A real CT has
#: nearly all its voxels there (outside-the-field-of-view padding at -2048 or -3024 HU is ~22 % of a
#: 512 x 512 slice); signed data read as unsigned (air -1000 -> 64536) or with the wrong byte order
#: has a third or less there.
CT_HU_RANGE = (-1024.0, 3071.0)
CT_MIN_FRACTION_IN_RANGE = 0.5


def ct_plausibility_problem(arr: np.ndarray) -> str | None:
    """Why ``arr`` (HU after rescale) does not look like a CT, or None: fewer than
    :data:`CT_MIN_FRACTION_IN_RANGE` of its voxels lie in :data:`CT_HU_RANGE`."""
    if not arr.size:
        return None
    lo, hi = CT_HU_RANGE
    inside = int(np.count_nonzero((arr >= lo) & (arr <= hi)))
    frac = inside / arr.size
    if frac >= CT_MIN_FRACTION_IN_RANGE:
        return None
    return (f"not plausible as CT: only {100 * frac:.1f} % of the voxels lie in {lo:g}..{hi:g} HU "
            f"(at least {100 * CT_MIN_FRACTION_IN_RANGE:g} % expected; values {arr.min():g}..{arr.max():g}): "
            "signed data declared unsigned, the wrong byte order or a wrong rescale?")
