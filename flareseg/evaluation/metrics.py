"""FLARE23 segmentation metrics: Dice (DSC) and normalised surface Dice (NSD), pure numpy.

Rules (official FLARE22/23 evaluation): per class, both masks empty -> (1, 1); reference empty
and prediction not -> (0, 0); for the classes in ``cfg.z_range_classes`` (aorta, IVC, esophagus)
both masks are first cut to the axial slices where the reference has that class; NSD is set to 0
when DSC < ``cfg.nsd_min_dsc``.  Arrays are ``(Z, Y, X)``, spacing in mm ``(z, y, x)``.

Two rule sets (``cfg.rules``): ``"flareseg"`` (the default, above) and ``"flare23-official"``
(:func:`evaluate_case_official`), which reproduces the official FLARE23 script's numbers; the
differences are listed there and in docs/evaluation.md.

Speed: each class is cut to the union bounding box of prediction and reference (found for all
classes in one pass by :func:`scipy.ndimage.find_objects`) before the distance transforms.
"""
from __future__ import annotations

from typing import Sequence

import logging

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from flareseg.config import EvaluationConfig
from flareseg.evaluation.surfels import neighbour_codes, official_area_table, surfels
from flareseg.labels import CLASS_NAMES, FOREGROUND, ORGANS

log = logging.getLogger(__name__)

#: ``evaluation.rules`` values
RULES = ("flareseg", "flare23-official")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of equal shape; 1.0 when both are empty."""
    p, r = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if p + r == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / (p + r)


def class_dsc(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int] = ORGANS) -> dict[int, dict]:
    """Per class (default: the 13 organs): reference and predicted voxel counts and DSC (None when
    the class is in neither)."""
    out = {}
    for c in classes:
        p, r = pred == c, ref == c
        n_p, n_r = int(p.sum()), int(r.sum())
        out[int(c)] = {"ref_voxels": n_r, "pred_voxels": n_p, "dsc": dice(p, r) if n_p + n_r else None}
    return out


def dice_per_class(a: np.ndarray, b: np.ndarray, classes: Sequence[int] | None = None) -> dict[int, float]:
    """Dice of each foreground class of two ``(Z, Y, X)`` label maps (default: classes in either)."""
    if classes is None:
        classes = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    return {int(c): dice(a == c, b == c) for c in classes}


def foreground_unchanged(ref: np.ndarray, other: np.ndarray) -> float:
    """Share of ``ref``'s foreground voxels with the same label in ``other`` (1.0 without foreground):
    what window skipping leaves unchanged against a prediction without it."""
    fg = ref > 0
    return float((other[fg] == ref[fg]).mean()) if fg.any() else 1.0


def surface_dice(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float],
                 tolerance_mm: float) -> float:
    """Normalised surface Dice of two boolean ``(Z, Y, X)`` masks at ``tolerance_mm``.

    Fraction of the total surface area (prediction + reference, mm^2) lying within the tolerance
    of the other surface.  Distances are measured between surfel centres on the cell grid with
    ``distance_transform_edt(sampling=spacing)``.  Both empty -> 1.0, one empty -> 0.0.
    The masks should already be cropped (see :func:`crop_pair`); the result does not depend on it.
    """
    spacing = tuple(float(s) for s in spacing_zyx)
    b_pred, a_pred = surfels(pred, spacing)
    b_ref, a_ref = surfels(ref, spacing)
    n_pred, n_ref = b_pred.any(), b_ref.any()
    if not n_pred and not n_ref:
        return 1.0
    if not n_pred or not n_ref:
        return 0.0
    d_to_ref = ndimage.distance_transform_edt(~b_ref, sampling=spacing)
    d_to_pred = ndimage.distance_transform_edt(~b_pred, sampling=spacing)
    close = a_pred[b_pred & (d_to_ref <= tolerance_mm)].sum() + a_ref[b_ref & (d_to_pred <= tolerance_mm)].sum()
    total = a_pred[b_pred].sum() + a_ref[b_ref].sum()
    return float(close / total) if total > 0 else 0.0


def _union(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _boxes(lab: np.ndarray, max_label: int) -> list[tuple[slice, ...] | None]:
    """Bounding box (slices) of each label 1..max_label; index 0 is label 1."""
    lab = np.asarray(lab)
    if lab.dtype.kind not in "iu":
        lab = lab.astype(np.int32)
    boxes = ndimage.find_objects(lab, max_label=max_label) if max_label > 0 else []
    return list(boxes) + [None] * (max_label - len(boxes))


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float],
                  cfg: EvaluationConfig = EvaluationConfig(),
                  classes: Sequence[int] = FOREGROUND) -> dict[int, tuple[float, float]]:
    """DSC and NSD per class for one case under the FLARE23 rules.

    ``pred``/``ref``: integer label maps ``(Z, Y, X)`` on the same grid; ``spacing_zyx`` in mm
    (the reference's).  Returns ``{class: (dsc, nsd)}`` for every class in ``classes``.
    Tolerances come from ``cfg.nsd_tolerance_mm`` (mm).  With ``cfg.rules == "flare23-official"``
    this is :func:`evaluate_case_official`.
    """
    if cfg.rules == "flare23-official":
        return evaluate_case_official(pred, ref, spacing_zyx, cfg, classes)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    top = max(classes) if classes else 0
    box_p, box_r = _boxes(pred, top), _boxes(ref, top)
    out: dict[int, tuple[float, float]] = {}
    for c in classes:
        bp, br = box_p[c - 1], box_r[c - 1]
        if br is None:  # reference empty: 1 if the prediction is empty too, else 0
            out[c] = (1.0, 1.0) if bp is None else (0.0, 0.0)
            continue
        if c in cfg.z_range_classes and bp is not None:
            z = slice(max(bp[0].start, br[0].start), min(bp[0].stop, br[0].stop))
            bp = None if z.start >= z.stop else (z,) + tuple(bp[1:])
        if bp is None:  # nothing predicted (within the reference's z-range)
            out[c] = (0.0, 0.0)
            continue
        box = _union(bp, br)
        # for z-range classes the box lies inside the reference's slices, so cropping cuts both
        p, r = pred[box] == c, ref[box] == c
        out[c] = _dice_then_nsd(p, r, c, cfg, lambda tol: surface_dice(p, r, spacing_zyx, tol))
    return out


def _dice_then_nsd(p: np.ndarray, r: np.ndarray, c: int, cfg, surface) -> tuple[float, float]:
    """(DSC, NSD) of one class's masks: NSD (``surface(tolerance_mm)``) only when DSC reaches
    ``cfg.nsd_min_dsc``, else 0, as the FLARE rules score it."""
    d = dice(p, r)
    if d < cfg.nsd_min_dsc:
        return d, 0.0
    tol = cfg.nsd_tolerance_mm.get(c)
    if tol is None:
        raise KeyError(f"no NSD tolerance configured for class {c} (evaluation.nsd_tolerance_mm)")
    return d, surface(tol)


# --------------------------------------------------------------------------- official FLARE23 rules

def official_surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                          tolerance_mm: float) -> float:
    """Normalised surface Dice exactly as the official FLARE23 script computes it.

    ``pred``/``ref`` boolean masks and ``spacing`` in the official axis order (NIfTI i, j, k, i.e.
    our ``(X, Y, Z)``).  Surfels weighted with :func:`~flareseg.evaluation.surfels.official_area_table`;
    distances between surfel cells by ``distance_transform_edt`` on the union's bounding box.  Both
    empty -> 1.0 (the script never gets there), one empty -> 0.0 (as the script's formula gives).
    """
    spacing = tuple(float(s) for s in spacing)
    both = pred | ref
    if not both.any():
        return 1.0
    box = ndimage.find_objects(both.view(np.uint8))[0]
    codes_p, codes_r = neighbour_codes(pred[box]), neighbour_codes(ref[box])
    b_pred, b_ref = (codes_p != 0) & (codes_p != 255), (codes_r != 0) & (codes_r != 255)
    if not b_pred.any() or not b_ref.any():
        return 0.0
    table = official_area_table(spacing)
    a_pred, a_ref = table[codes_p[b_pred]], table[codes_r[b_ref]]
    cells_p, cells_r = np.argwhere(b_pred), np.argwhere(b_ref)
    close = (a_pred[within_tolerance(cells_p, cells_r, spacing, tolerance_mm)].sum()
             + a_ref[within_tolerance(cells_r, cells_p, spacing, tolerance_mm)].sum())
    return float(close / (a_pred.sum() + a_ref.sum()))


def within_tolerance(cells: np.ndarray, others: np.ndarray, spacing: Sequence[float],
                     tolerance_mm: float) -> np.ndarray:
    """For each row of ``cells`` (integer ``(N, 3)`` cell indices): is its distance to the nearest of
    ``others`` at most ``tolerance_mm``?

    Same answer as ``distance_transform_edt(~others_mask, sampling=spacing)[cells] <= tolerance_mm``
    (the official script's test), but found with a k-d tree over the surface cells only, so the
    cost grows with the surface, not with the bounding box.  The candidate's distance is recomputed
    with the transform's arithmetic (``sqrt(sum(((j - i) * s) ** 2))`` in axis order), so cells at
    exactly the tolerance (common with whole-millimetre spacings) fall on the same side.
    """
    s = np.asarray(spacing, dtype=np.float64)
    if len(cells) == 0:
        return np.zeros(0, dtype=bool)
    if len(others) == 0:
        return np.zeros(len(cells), dtype=bool)
    tree = cKDTree(others * s)
    _, idx = tree.query(cells * s, distance_upper_bound=tolerance_mm * (1 + 1e-9) + 1e-9)
    found = idx < len(others)
    diff = (others[idx[found]] - cells[found]).astype(np.float64) * s
    diff *= diff
    dist = np.sqrt((diff[:, 0] + diff[:, 1]) + diff[:, 2])
    out = np.zeros(len(cells), dtype=bool)
    out[np.flatnonzero(found)[dist <= tolerance_mm]] = True
    return out


def evaluate_case_official(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float],
                           cfg: EvaluationConfig = EvaluationConfig(),
                           classes: Sequence[int] = FOREGROUND,
                           case: str = "") -> dict[int, tuple[float, float]]:
    """DSC and NSD per class under the official FLARE23 script's rules (``--rules flare23-official``).

    Same inputs as :func:`evaluate_case`.  What differs from the flareseg rules:

    - z-range classes (``cfg.z_range_classes``; aorta, IVC, esophagus) are scored on the
      reference's slices ``[z_lower:z_upper]`` of that class, a Python slice that leaves out the
      top labelled slice; the prediction is cut the same way;
    - a reference whose class lies on a single slice makes that range empty and the official
      script crash (NaN DSC, then a reduction over an empty array): here the single slice is
      scored instead (``[z_lower:z_lower + 1]``) and a warning says so;
    - surfel areas from the official table, computed in the official axis order (X, Y, Z).

    Shared with the flareseg rules: both empty -> (1, 1); one empty in the whole volume -> (0, 0);
    NSD = 0 when DSC < ``cfg.nsd_min_dsc`` (0.1 in the 2023 challenge script, 0.2 in the current one).
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    spacing_xyz = tuple(float(s) for s in spacing_zyx)[::-1]
    top = max(classes) if classes else 0
    box_p, box_r = _boxes(pred, top), _boxes(ref, top)
    out: dict[int, tuple[float, float]] = {}
    for c in classes:
        bp, br = box_p[c - 1], box_r[c - 1]
        if br is None or bp is None:
            out[c] = (1.0, 1.0) if br is None and bp is None else (0.0, 0.0)
            continue
        if c in cfg.z_range_classes:
            z_lower, z_upper = br[0].start, br[0].stop - 1  # lowest and highest labelled slice
            if z_upper == z_lower:
                log.warning("%sclass %d (%s): the reference is on one slice (z=%d); the official script "
                            "fails on this, scoring that slice", f"case {case}: " if case else "", c,
                            CLASS_NAMES.get(c, c), z_lower)
                z_upper = z_lower + 1
            z = slice(z_lower, z_upper)
            box = (z,) + tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(bp[1:], br[1:]))
        else:
            box = _union(bp, br)
        p, r = pred[box] == c, ref[box] == c
        out[c] = _dice_then_nsd(p, r, c, cfg, lambda tol: official_surface_dice(
            np.ascontiguousarray(p.transpose(2, 1, 0)), np.ascontiguousarray(r.transpose(2, 1, 0)),
            spacing_xyz, tol))
    return out
