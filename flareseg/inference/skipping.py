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

Growth safeguard (on by default): the indicators of a plane can miss an object that lies only in
its other windows -- the dome of the liver, a tumour at the lateral border of the top planes --
while a neighbouring plane (windows overlap along z) or the plane's own indicators see part of
it.  After the indicator rule, a skipped plane is run too when the windows that already ran
predicted at least ``threshold`` foreground voxels (their own argmax; ``threshold`` 1: any)
inside the neighbourhood of one of the plane's not-yet-run windows: that window's box grown by
one voxel on every side, so faces that touch without overlapping (step size 1) also count.  Newly
run planes can trigger their own neighbours; this repeats to a fixed point.  Windows that ran are
never rerun or changed; a plane runs whole or not at all.

Foreground is bookkept on a :class:`CellGrid`: every window face (and the face one voxel
further out) cuts each axis, so a window and every neighbourhood are unions of cells, and a
window's argmax reduces to a few dozen per-cell counts.  ``fg_cells`` holds, per cell, the most
foreground voxels any run window saw there; a neighbourhood's foreground is the sum over its cells.

What growth guarantees: for a predictor whose windows agree where they overlap, an object that
is connected (26-neighbourhood) to foreground any run window predicted is kept whole -- walking
along the object, the next voxel lies in some window (every voxel is covered) whose one-voxel
neighbourhood holds the current voxel, already predicted as foreground, so that window's plane
runs.  A real network's windows disagree a little near their borders; there the guarantee holds
for what the run windows predicted.  What it does not cover: an *isolated* object that lies only in
not-run windows of planes whose indicators are empty and that touches no foreground of any run
window is still skipped (background), exactly as without growth.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: a box in cell indices (z, y, x)
CellBox = tuple[slice, slice, slice]


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


@dataclass(frozen=True)
class CellGrid:
    """Cells of a padded ``(Z, Y, X)`` volume cut by every window face and the faces one voxel out.

    ``edges[a]`` are the sorted cut positions (voxels) along axis ``a``, from 0 to the axis size.
    """

    edges: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    patch: tuple[int, int, int]

    @classmethod
    def of(cls, starts_zyx: Sequence[Sequence[int]], patch: Sequence[int], shape_zyx: Sequence[int],
           margin: int = 1) -> "CellGrid":
        """Grid for windows with starts ``starts_zyx[a]`` along each axis, neighbourhood ``margin``."""
        edges = []
        for starts, p, n in zip(starts_zyx, patch, shape_zyx):
            cut = {0, int(n)}
            for s in starts:
                for d in range(margin + 1):
                    cut.update((max(0, s - d), min(int(n), s + p + d)))
            edges.append(tuple(sorted(cut)))
        return cls(tuple(edges), tuple(int(p) for p in patch))  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(e) - 1 for e in self.edges)  # type: ignore[return-value]

    def cells(self, start: Sequence[int], margin: int = 0) -> CellBox:
        """Cell indices of the window at ``start`` grown by ``margin`` voxels (clipped to the volume)."""
        out = []
        for e, s, p in zip(self.edges, start, self.patch):
            lo, hi = max(e[0], s - margin), min(e[-1], s + p + margin)
            i, j = bisect.bisect_left(e, lo), bisect.bisect_left(e, hi)
            if e[i] != lo or e[j] != hi:
                raise ValueError(f"box [{lo}, {hi}) is not made of cells {e}")
            out.append(slice(i, j))
        return tuple(out)  # type: ignore[return-value]

    def window_cuts(self, start: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """Cut positions inside the window at ``start``, relative to it (``0 ... patch``), per axis."""
        return tuple([c - s for c in e if s <= c <= s + p]  # type: ignore[return-value]
                     for e, s, p in zip(self.edges, start, self.patch))


def record_foreground(fg_cells: np.ndarray, box: CellBox, counts: np.ndarray) -> None:
    """Fold one run window's per-cell foreground ``counts`` (shape of ``box``) into ``fg_cells``."""
    np.maximum(fg_cells[box], counts, out=fg_cells[box])


def planes_to_grow(plane_run: Sequence[bool], rest_neighbourhoods: Sequence[Sequence[CellBox]],
                   fg_cells: np.ndarray, threshold: int) -> list[int]:
    """Skipped planes that one growth step runs (see the module docstring).

    ``rest_neighbourhoods[q]`` holds, for each not-yet-run window of plane ``q``, its box grown by
    the grid's margin, in cells; ``fg_cells`` the per-cell foreground of the windows that ran.
    A plane grows when any of those boxes holds at least ``max(threshold, 1)`` foreground voxels.
    """
    need = max(int(threshold), 1)
    return [q for q, (ran, boxes) in enumerate(zip(plane_run, rest_neighbourhoods))
            if not ran and any(int(fg_cells[b].sum()) >= need for b in boxes)]
