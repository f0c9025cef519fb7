"""Rule 2: remove tumor components outside the abdominal region.

The region is :func:`flareseg.anatomy.abdomen_region`: the bounding box of all organ voxels grown
by ``margin_mm`` when the map has organs, otherwise the body mask of the CT (``image``, HU).  A
tumor component is *outside* when not one of its voxels lies in the region; a component that
overlaps the region, even partly, is kept whole.  With neither organs nor an image there is no
region to test against and nothing is removed.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from flareseg.anatomy import abdomen_region, bbox_of
from flareseg.cleaning.components import Components, label_components
from flareseg.cleaning.records import OUTSIDE_ABDOMEN, Removal, record_of
from flareseg.labels import TUMOR

log = logging.getLogger(__name__)


def remove_tumors_outside_abdomen(label: np.ndarray, spacing_zyx: Sequence[float],
                                  margin_mm: float, image: np.ndarray | None = None,
                                  connectivity: int = 26, case_id: str = "",
                                  tumors: Components | None = None
                                  ) -> tuple[np.ndarray, list[Removal]]:
    """Set tumor (class 14) components that do not overlap the abdominal region to 0.

    ``label``/``image``: ``(Z, Y, X)``, same shape; ``spacing_zyx`` and ``margin_mm`` in mm.
    ``tumors``: the tumor components of ``label`` if already computed.
    Returns the cleaned map (the input itself when nothing was removed) and the records.
    """
    comps = tumors if tumors is not None else label_components(label, connectivity, (TUMOR,))
    if not comps.items:
        return label, []
    n_tumor = sum(c.voxels for c in comps.items)
    if np.count_nonzero(label) > n_tumor:  # organ voxels present (labels are 0..14)
        fg = bbox_of(label > 0)
        sub = label[fg]  # type: ignore[index]
        # the organ bbox lies inside the foreground bbox, so the region clipped to it is exact
        region, origin = abdomen_region(sub, spacing_zyx, margin_mm), fg
    elif image is not None:
        if image.shape != label.shape:
            raise ValueError(f"image shape {image.shape} != label shape {label.shape}")
        region = abdomen_region(None, spacing_zyx, margin_mm, image=image)
        origin = tuple(slice(0, n) for n in label.shape)
    else:
        log.info("%s: no organs and no image, abdominal-region rule skipped", case_id or "label")
        return label, []
    out, records = label, []
    for c in comps.items:
        local = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(c.bbox, origin))
        if region[local][comps.mask(c)].any():
            continue
        if out is label:
            out = label.copy()
        out[c.bbox][comps.mask(c)] = 0
        records.append(record_of(c, spacing_zyx, OUTSIDE_ABDOMEN, case_id))
    return out, records
