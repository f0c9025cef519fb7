"""Axis permutation that brings a ``(Z, Y, X)`` array into axial layout, and back.

Convention (SimpleITK): the direction matrix is 3x3, row-major, rows are physical axes
``(x, y, z)`` (L-R, A-P, S-I) and column ``j`` is the physical direction of index axis ``j``.
The numpy array of an image is in reversed index order, so array axis ``k`` is index axis ``2 - k``.

An array is in *axial layout* when array axis 0 runs along patient S-I (physical z), axis 1 along
A-P (y) and axis 2 along L-R (x): the layout nnU-Net training data have.  Only the axes are
permuted; flips are kept as stored (training data keep their stored flips, and the model has seen
them).  An oblique matrix maps each index axis to its nearest physical axis; the obliquity itself is
not resampled (as in nnU-Net, which never resamples it either).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Reorientation:
    """``reoriented = array.transpose(perm)``; ``array = reoriented.transpose(inverse)``.

    The same ``perm`` orders a ``(Z, Y, X)`` spacing: ``[spacing_zyx[a] for a in perm]``.
    """

    perm: tuple[int, int, int]
    inverse: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2)


def axial_reorientation(direction: Sequence[float]) -> Reorientation:
    """Array-axis permutation that puts a ``(Z, Y, X)`` array with ``direction`` in axial layout.

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
    return Reorientation(perm, inverse)  # type: ignore[arg-type]
