"""Rule 1: remove connected components smaller than ``min_voxels``, per class.

Every class is labelled separately (a 50-voxel spleen speck next to the liver is its own
component), and each component smaller than ``min_voxels`` — whatever class, tumor included —
is set to background (0).  Background is the honest value: the voxels' true class is unknown, and
re-labelling them with a neighbour's class would invent annotation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from flareseg.cleaning.components import label_components
from flareseg.cleaning.records import SMALL_COMPONENT, Removal, record_of


def remove_small_components(label: np.ndarray, spacing_zyx: Sequence[float], min_voxels: int,
                            connectivity: int = 26, case_id: str = "",
                            classes: Sequence[int] | None = None
                            ) -> tuple[np.ndarray, list[Removal]]:
    """Set every component of ``classes`` (default: all foreground) with fewer than ``min_voxels``
    voxels to 0.

    ``label``: ``(Z, Y, X)`` integer map; ``spacing_zyx`` in mm (only for the mm³ in records).
    Returns the cleaned map (the input itself when nothing was removed; it is never modified) and
    one record per removed component.
    """
    if min_voxels <= 1:
        return label, []
    comps = label_components(label, connectivity, classes)
    small = [c for c in comps.items if c.voxels < min_voxels]
    if not small:
        return label, []
    out = label.copy()
    if len(small) > 64:  # many specks: one lookup over the crop beats one mask per component
        drop = np.zeros(len(comps.items) + 1, dtype=bool)
        drop[[c.id for c in small]] = True
        out[comps.crop][drop[comps.ids]] = 0
    else:
        for c in small:
            out[c.bbox][comps.mask(c)] = 0
    return out, [record_of(c, spacing_zyx, SMALL_COMPONENT, case_id) for c in small]
