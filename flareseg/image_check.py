"""The limits an input CT must meet, in one place: import (``flareseg.data.validate``) and the
predictor (``flareseg.inference.predictor``) check the same named limits with the same messages.

Voxel spacing: every axis in :data:`SPACING_RANGE_MM` (0.1 to 20 mm, docs/reliability.md: thinner
than 0.1 mm is a header in the wrong unit, thicker than 20 mm is not a volume to segment; 12-20
mm slabs are rare but real, and what predicts must also import).  Shape: a non-empty 3-D volume.
Values: no NaN/inf (:data:`ALLOW_NONFINITE` is False), and not one constant value.
"""
from __future__ import annotations

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
