"""All cleaning rules on one label map, in order, driven by :class:`CleaningConfig`."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from flareseg.cleaning.components import label_components
from flareseg.cleaning.records import Removal
from flareseg.cleaning.small_components import remove_small_components
from flareseg.cleaning.tumor_distance import remove_tumors_far_from_organs
from flareseg.cleaning.tumor_region import remove_tumors_outside_abdomen
from flareseg.config import CleaningConfig, Config
from flareseg.labels import MAX_LABEL, TUMOR


def clean_label(label: np.ndarray, spacing_zyx: Sequence[float], cfg: CleaningConfig | Config,
                image: np.ndarray | None = None, case_id: str = ""
                ) -> tuple[np.ndarray, list[Removal]]:
    """Clean a ``(Z, Y, X)`` FLARE23 label map; returns a new array (same dtype) and the removals.

    Rules, in this order (each sees the previous one's output):
      1. components smaller than ``cfg.min_voxels``, any class -> 0;
      2. if ``cfg.remove_outside_abdomen``: tumor components not overlapping the abdominal region
         (organ bbox + ``cfg.abdomen_margin_mm``, or the body mask of ``image`` (HU) without
         organs) -> 0.  Runs after rule 1 so organ specks do not stretch the region;
      3. if ``cfg.remove_far_from_organs``: tumor components farther than
         ``cfg.max_organ_distance_mm`` mm from every organ -> 0.
    ``spacing_zyx`` in mm; ``image`` optional, same shape as ``label``.  The input is not modified.
    """
    cfg = getattr(cfg, "cleaning", cfg)
    _check(label, spacing_zyx, image)
    out, records = remove_small_components(label, spacing_zyx, cfg.min_voxels,
                                           cfg.connectivity, case_id)
    # the tumor components are labelled once; rule 3 gets those rule 2 kept (ids stay valid)
    tumors = label_components(out, cfg.connectivity, (TUMOR,))
    if cfg.remove_outside_abdomen and tumors.items:
        out, rec = remove_tumors_outside_abdomen(out, spacing_zyx, cfg.abdomen_margin_mm, image,
                                                 cfg.connectivity, case_id, tumors)
        records += rec
        if rec:  # keep the components still present (a removed one is all background now)
            tumors = replace(tumors, items=[c for c in tumors.items
                                            if out[c.bbox][tumors.mask(c)].any()])
    if cfg.remove_far_from_organs and tumors.items:
        out, rec = remove_tumors_far_from_organs(out, spacing_zyx, cfg.max_organ_distance_mm,
                                                 cfg.connectivity, case_id, tumors)
        records += rec
    return (label.copy() if out is label else out), records


def _check(label: np.ndarray, spacing_zyx: Sequence[float], image: np.ndarray | None) -> None:
    if label.ndim != 3:
        raise ValueError(f"label must be 3-D (Z, Y, X), got shape {label.shape}")
    if label.dtype.kind not in "ui":
        raise ValueError(f"label must have an integer dtype, got {label.dtype}")
    if label.size and (int(label.max()) > MAX_LABEL or int(label.min()) < 0):
        raise ValueError(f"label values must be FLARE23 classes 0..{MAX_LABEL}, got range "
                         f"{int(label.min())}..{int(label.max())}")
    if len(spacing_zyx) != 3 or any(float(s) <= 0 for s in spacing_zyx):
        raise ValueError(f"spacing_zyx must be 3 positive values in mm, got {tuple(spacing_zyx)}")
    if image is not None and image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} != label shape {label.shape}")
