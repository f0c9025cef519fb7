"""Window skipping: which windows of an axial plane are predicted first, and when the rest may go.

A *plane* is the set of sliding windows that share one z start; its windows form an ``ny × nx``
in-plane grid indexed ``(iy, ix)`` (row-major, window ``iy * nx + ix``).  The *indicator* windows
are predicted first; when their argmax holds fewer than ``threshold`` foreground voxels, the
plane's other windows are not run and the region only they cover is background.

Indicator rule (the paper's two cases plus a documented generalisation):

* both ``ny`` and ``nx`` odd and at most 3 (``1×1``, ``1×3``, ``3×1``, ``3×3``): the centre window
  ``(ny // 2, nx // 2)`` — for ``3×3`` this is the paper's rule; at step 0.5 it covers the middle
  half of the plane along both axes, where the abdomen lies;
* every other grid: the corner-to-corner *digital diagonal* of ``k = max(ny, nx)`` windows,
  ``(floor(i*(ny-1)/(k-1) + 1/2), floor(i*(nx-1)/(k-1) + 1/2))`` for ``i = 0..k-1``.  For ``2×2``
  this is windows 0 and 3 (the paper's rule); for ``n×n`` the main diagonal; for non-square grids
  every row and every column holds at least one indicator window, so no in-plane band of the
  image goes unsampled.  Grids with one window per row or column (``1×2``, ``2×1``...) therefore
  predict every window and never skip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def indicator_windows(ny: int, nx: int) -> list[tuple[int, int]]:
    """Indicator windows ``(iy, ix)`` of an ``ny × nx`` plane (see the module docstring)."""
    if ny < 1 or nx < 1:
        raise ValueError(f"grid must be at least 1x1, got {ny}x{nx}")
    if ny % 2 == 1 and nx % 2 == 1 and max(ny, nx) <= 3:
        return [(ny // 2, nx // 2)]
    k = max(ny, nx)
    out: list[tuple[int, int]] = []
    for i in range(k):
        w = (math.floor(i * (ny - 1) / (k - 1) + 0.5), math.floor(i * (nx - 1) / (k - 1) + 0.5))
        if w not in out:
            out.append(w)
    return out


@dataclass(frozen=True)
class SkipPlan:
    """Windows split into a first pass (indicators) and, per plane, the windows that may be skipped.

    Windows are flat indices into the caller's window list.
    """

    first: list[int]
    indicators_of_plane: list[list[int]]
    rest_of_plane: list[list[int]]


def plan_skipping(grids: list[tuple[int, int]], skip: bool) -> SkipPlan:
    """Split the windows of consecutive planes (grid sizes ``(ny, nx)``, windows row-major) into passes.

    With ``skip=False`` every window is in the first pass and nothing can be skipped.
    """
    first: list[int] = []
    inds: list[list[int]] = []
    rest: list[list[int]] = []
    offset = 0
    for ny, nx in grids:
        n = ny * nx
        if skip:
            ind = sorted(offset + iy * nx + ix for iy, ix in indicator_windows(ny, nx))
        else:
            ind = list(range(offset, offset + n))
        ind_set = set(ind)
        inds.append(ind)
        rest.append([w for w in range(offset, offset + n) if w not in ind_set])
        first.extend(ind)
        offset += n
    return SkipPlan(first, inds, rest)


def planes_to_run(plan: SkipPlan, fg_voxels: dict[int, int], threshold: int) -> list[bool]:
    """Per plane: True when its indicator windows hold at least ``threshold`` foreground voxels.

    ``fg_voxels`` maps a first-pass window to the foreground voxel count of its own argmax.
    Planes without windows to skip are reported as run.
    """
    out = []
    for ind, rest in zip(plan.indicators_of_plane, plan.rest_of_plane):
        if not rest:
            out.append(True)
            continue
        out.append(sum(fg_voxels[w] for w in ind) >= threshold)
    return out
