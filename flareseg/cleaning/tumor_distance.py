"""Rule 3: remove tumor components farther than ``max_distance_mm`` from every organ.

Distance is Euclidean, in mm, between voxel centres: the smallest distance from any voxel of the
tumor component to any organ voxel (classes 1-13), honouring anisotropic spacing.  A tumor
face-adjacent to an organ along axis ``a`` is ``spacing[a]`` mm away; a tumor inside an organ
likewise.  A component is removed when that distance exceeds ``max_distance_mm``.

Only the neighbourhood that can matter is examined: the component's bounding box grown by
``max_distance_mm`` (per axis, in voxels, rounded up) holds every voxel within that distance, so
an exact Euclidean distance transform (``sampling=spacing``) on that crop decides the rule exactly.
A direct contact check skips the transform for tumors touching an organ.  When the whole map has
no organ voxels (a tumor-only annotation: organs unannotated, not absent) the rule cannot be
judged and nothing is removed.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

from flareseg.anatomy import expand_bbox, organ_mask
from flareseg.cleaning.components import Components, label_components
from flareseg.cleaning.records import FAR_FROM_ORGANS, Removal, record_of
from flareseg.labels import TUMOR

log = logging.getLogger(__name__)


def touches(a: np.ndarray, b: np.ndarray, axes: Sequence[int]) -> bool:
    """Whether a voxel of mask ``a`` is face-adjacent (along one of ``axes``) to a voxel of ``b``."""
    for ax in axes:
        lo = [slice(None)] * a.ndim
        hi = [slice(None)] * a.ndim
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        if np.any(a[tuple(lo)] & b[tuple(hi)]) or np.any(a[tuple(hi)] & b[tuple(lo)]):
            return True
    return False


def tumor_organ_distance(tumor: np.ndarray, organ: np.ndarray,
                         spacing_zyx: Sequence[float]) -> float:
    """Smallest centre-to-centre distance (mm) between two masks of one ``(Z, Y, X)`` crop.

    ``inf`` when ``organ`` is empty; 0 when they overlap.
    """
    if not organ.any():
        return float("inf")
    dist = ndimage.distance_transform_edt(~organ, sampling=tuple(float(s) for s in spacing_zyx))
    return float(dist[tumor].min())


def remove_tumors_far_from_organs(label: np.ndarray, spacing_zyx: Sequence[float],
                                  max_distance_mm: float, connectivity: int = 26,
                                  case_id: str = "", tumors: Components | None = None
                                  ) -> tuple[np.ndarray, list[Removal]]:
    """Set tumor components farther than ``max_distance_mm`` (mm) from every organ voxel to 0.

    ``label``: ``(Z, Y, X)`` map; ``spacing_zyx`` in mm.  Returns the cleaned map (the input
    itself when nothing was removed) and one record per removed component with its distance when
    an organ voxel lay in the search box (``None``: none within ``max_distance_mm`` along an axis).
    ``tumors``: the tumor components of ``label`` if already computed.
    """
    comps = tumors if tumors is not None else label_components(label, connectivity, (TUMOR,))
    if not comps.items:
        return label, []
    contact_axes = [a for a, s in enumerate(spacing_zyx) if float(s) <= max_distance_mm]
    out, records, any_organ = label, [], None
    for c in comps.items:
        box = expand_bbox(c.bbox, max_distance_mm, spacing_zyx, label.shape)
        organ = organ_mask(label[box])
        if organ.any():
            tumor = comps.mask(c, box)
            if touches(tumor, organ, contact_axes):
                continue
            d: float | None = tumor_organ_distance(tumor, organ, spacing_zyx)
            if d <= max_distance_mm:  # type: ignore[operator]
                continue
        else:
            if any_organ is None:
                any_organ = bool(organ_mask(label).any())
                if not any_organ:
                    log.info("%s: no organ voxels, distance rule skipped", case_id or "label")
            if not any_organ:
                return label, []
            d = None
        if out is label:
            out = label.copy()
        out[c.bbox][comps.mask(c)] = 0
        records.append(record_of(c, spacing_zyx, FAR_FROM_ORGANS, case_id, distance_mm=d))
    return out, records
