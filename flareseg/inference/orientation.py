"""Axis permutation that brings a ``(Z, Y, X)`` array into axial layout, and back.

Convention (SimpleITK): the direction matrix is 3x3, row-major, rows are physical axes
``(x, y, z)`` (L-R, A-P, S-I) and column ``j`` is the physical direction of index axis ``j``.
The numpy array of an image is in reversed index order, so array axis ``k`` is index axis ``2 - k``.

An array is in *axial layout* when array axis 0 runs along patient S-I (physical z), axis 1 along
A-P (y) and axis 2 along L-R (x): the layout nnU-Net training data have.  With ``canonical`` the
axes are also flipped so that each one ascends along its physical axis (LPS: x to the patient's
left, y posterior, z superior; direction the identity), the orientation flareseg's import gives its
training data (``data.reorient``, :func:`canonical_image`) -- as TotalSegmentator brings every scan to
one orientation.  Without it flips are kept as stored (a stock nnU-Net model has seen its training
data's stored flips).  An oblique matrix maps each index axis to its nearest physical axis; the
obliquity itself is not resampled (as in nnU-Net, which never resamples it either).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Reorientation:
    """``reoriented = array.transpose(perm)``; ``array = reoriented.transpose(inverse)``.

    The same ``perm`` orders a ``(Z, Y, X)`` spacing: ``[spacing_zyx[a] for a in perm]``.
    """

    perm: tuple[int, int, int]
    inverse: tuple[int, int, int]
    flips: tuple[int, ...] = ()      # stored array axes reversed before the permutation

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not self.flips

    def apply(self, array: np.ndarray, lead: int = 0) -> np.ndarray:
        """Stored ``(..., Z, Y, X)`` array (``lead`` leading axes, e.g. channels) -> reoriented view."""
        out = np.flip(array, tuple(lead + a for a in self.flips)) if self.flips else array
        return out.transpose(*range(lead), *(lead + a for a in self.perm))

    def undo(self, array: np.ndarray, lead: int = 0) -> np.ndarray:
        """Reoriented ``(..., Z, Y, X)`` array -> stored order (a view)."""
        out = array.transpose(*range(lead), *(lead + a for a in self.inverse))
        return np.flip(out, tuple(lead + a for a in self.flips)) if self.flips else out


def axial_reorientation(direction: Sequence[float], canonical: bool = False) -> Reorientation:
    """Array-axis permutation (and with ``canonical`` flips) that puts a ``(Z, Y, X)`` array with
    ``direction`` in axial layout.

    Each physical axis gets the index axis most aligned with it: the assignment maximising the sum
    of ``|cosine|`` over the 6 possible ones.  Ties (e.g. exactly 45 degrees) keep the stored order
    where possible (the identity is tried first and only a strictly better assignment replaces it),
    so the result is deterministic.
    """
    d = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
    if not np.all(np.isfinite(d)):
        raise ValueError(f"direction matrix has non-finite entries: {tuple(direction)}")
    best, best_score = (0, 1, 2), -1.0
    for assign in itertools.permutations(range(3)):  # assign[p] = index axis for physical axis p
        score = float(sum(d[p, assign[p]] for p in range(3)))
        if score > best_score + 1e-9:
            best, best_score = assign, score
    # reoriented array axis k <-> physical axis 2-k <-> stored index axis best[2-k] <-> array axis 2-best[2-k]
    perm = tuple(2 - best[2 - k] for k in range(3))
    inverse = tuple(int(i) for i in np.argsort(perm))
    flips: tuple[int, ...] = ()
    if canonical:
        signed = np.asarray(direction, dtype=float).reshape(3, 3)
        # stored array axis 2-i is index axis i; it runs along physical axis p where best[p] == i
        flips = tuple(sorted(2 - best[p] for p in range(3) if signed[p, best[p]] < 0))
    return Reorientation(perm, inverse, flips)  # type: ignore[arg-type]


def canonical_image(image: sitk.Image) -> sitk.Image:
    """``image`` with its array permuted and flipped so that the direction is (nearest) the
    identity (LPS ascending): the same voxels at the same physical positions, nothing resampled.
    ``image`` itself when it is already canonical.  SimpleITK's ``DICOMOrient`` does the move; it
    agrees with :func:`axial_reorientation` ``(canonical=True)`` on the array (tested)."""
    if axial_reorientation(image.GetDirection(), canonical=True).is_identity:
        return image
    return sitk.DICOMOrient(image, "LPS")
