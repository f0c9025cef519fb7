"""Per-case statistics of a predicted label map: class volumes (mL) and tumor burden."""
from __future__ import annotations

from typing import Mapping, Sequence

import cc3d
import numpy as np

from flareseg.labels import TUMOR


def label_statistics(labels: np.ndarray, spacing_zyx: Sequence[float], names: Mapping[int, str],
                     tumor_label: int | None = TUMOR) -> dict:
    """Volumes of every named foreground class and the tumor burden of a ``(Z, Y, X)`` label map.

    ``{"volumes_ml": {name: mL}, "voxels": {name: n}, "tumor": {"volume_ml", "components",
    "largest_ml"}}``; absent classes have volume 0.  Voxel volume from ``spacing_zyx`` (mm).
    """
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
    out: dict = {"voxel_volume_ml": voxel_ml, "volumes_ml": {}, "voxels": {}}
    for idx, name in sorted(names.items()):
        if idx == 0:
            continue
        out["voxels"][name] = int(counts[idx])
        out["volumes_ml"][name] = round(float(counts[idx]) * voxel_ml, 3)
    if tumor_label is not None and tumor_label in names:
        mask = labels == tumor_label
        comp, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
        sizes = np.bincount(comp.ravel())[1:] if n else np.zeros(0, dtype=np.int64)
        out["tumor"] = {"volume_ml": round(float(mask.sum()) * voxel_ml, 3), "components": int(n),
                        "largest_ml": round(float(sizes.max() if n else 0) * voxel_ml, 3)}
    return out
