"""Abdominal region and body mask: the one definition that cleaning, the CTO pool and CutMix share.

All functions are pure numpy on ``(Z, Y, X)`` arrays with spacing given as ``(z, y, x)`` mm.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from flareseg.labels import ORGANS

BBox = tuple[slice, slice, slice]


def organ_mask(label: np.ndarray, organs: Sequence[int] = ORGANS) -> np.ndarray:
    """Boolean mask of voxels labelled with any of ``organs``."""
    lut = np.zeros(max(int(label.max()), max(organs)) + 1, dtype=bool)
    lut[list(organs)] = True
    return lut[label]


def bbox_of(mask: np.ndarray) -> BBox | None:
    """Tight bounding box (slices) of a boolean mask, or ``None`` if empty."""
    if not mask.any():
        return None
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def expand_bbox(bbox: BBox, margin_mm: float, spacing: Sequence[float],
                shape: Sequence[int]) -> BBox:
    """Grow a bounding box by ``margin_mm`` on every side (converted per axis), clipped to ``shape``."""
    out = []
    for sl, sp, n in zip(bbox, spacing, shape):
        m = int(np.ceil(margin_mm / float(sp))) if margin_mm > 0 else 0
        out.append(slice(max(0, sl.start - m), min(int(n), sl.stop + m)))
    return tuple(out)  # type: ignore[return-value]


def body_mask(image: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """Body of a CT in HU: largest connected region above ``threshold_hu``, holes filled per slice."""
    fg = image > threshold_hu
    if not fg.any():
        return fg
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        fg = lab == int(np.argmax(sizes))
    out = np.empty_like(fg)
    for z in range(fg.shape[0]):
        out[z] = ndimage.binary_fill_holes(fg[z])
    return out


def outer_air(air: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` of a box cut from a CT: the unlabelled ``air`` voxels connected
    (6-neighbourhood) to a face of the box — outside air cut in with the box, or gas reaching its
    edge.  Enclosed air pockets are not included.  ``air`` is boolean (e.g. ``HU < -500``)."""
    air = np.asarray(air, dtype=bool) & (label == 0)
    if not air.any():
        return air
    comp, _ = ndimage.label(air)
    faces = np.concatenate([comp[0].ravel(), comp[-1].ravel(), comp[:, 0].ravel(), comp[:, -1].ravel(),
                            comp[:, :, 0].ravel(), comp[:, :, -1].ravel()])
    touching = np.unique(faces[faces > 0])
    return np.isin(comp, touching)


def abdomen_region(label: np.ndarray | None, spacing: Sequence[float], margin_mm: float,
                   image: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the abdominal region.

    With organ voxels in ``label``: their bounding box grown by ``margin_mm``.  Without organs:
    the body mask of ``image`` (HU).  Without either: everything (no restriction) — callers that
    need a region must pass one of the two.
    """
    shape = label.shape if label is not None else image.shape  # type: ignore[union-attr]
    if label is not None:
        bb = bbox_of(organ_mask(label))
        if bb is not None:
            bb = expand_bbox(bb, margin_mm, spacing, shape)
            region = np.zeros(shape, dtype=bool)
            region[bb] = True
            return region
    if image is not None:
        return body_mask(image)
    return np.ones(shape, dtype=bool)
