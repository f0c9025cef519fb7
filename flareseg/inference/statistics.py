"""Per-case statistics of a predicted label map: class volumes (mL), HU statistics per class and
per tumor component (with the image), and tumor burden.  Schema: docs/statistics.md."""
from __future__ import annotations

from typing import Mapping, Sequence

import cc3d
import numpy as np

from flareseg.labels import TUMOR

PERCENTILES = (5, 50, 95)


def hu_statistics(values: np.ndarray) -> dict | None:
    """``{"mean", "std", "p5", "p50", "p95"}`` of the HU ``values`` (population std, ddof 0;
    percentiles linearly interpolated, numpy's default), rounded to 0.01 HU; None when empty."""
    if values.size == 0:
        return None
    v = values.astype(np.float64, copy=False)
    p = np.percentile(v, PERCENTILES)
    return {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2),
            **{f"p{q}": round(float(x), 2) for q, x in zip(PERCENTILES, p)}}


def label_statistics(labels: np.ndarray, spacing_zyx: Sequence[float], names: Mapping[int, str],
                     tumor_label: int | None = TUMOR, image: np.ndarray | None = None) -> dict:
    """Volumes of every named foreground class and the tumor burden of a ``(Z, Y, X)`` label map.

    ``{"voxel_volume_ml", "volumes_ml": {name: mL}, "voxels": {name: n}, "tumor": {"volume_ml",
    "components", "largest_ml"}}``; absent classes have volume 0.  Voxel volume from
    ``spacing_zyx`` (mm).  With ``image`` (the CT in HU on the label map's grid) also
    ``"hu": {name: {mean, std, p5, p50, p95} or None when absent}`` and
    ``"tumor"["component_list"]``: one entry per 26-connected tumor component, largest first,
    ``{"component", "voxels", "volume_ml", "centroid_zyx", "hu"}``.
    """
    if image is not None and image.shape != labels.shape:
        raise ValueError(f"image shape {image.shape} differs from the label map's {labels.shape}")
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
    out: dict = {"voxel_volume_ml": voxel_ml, "volumes_ml": {}, "voxels": {}}
    if image is not None:
        out["hu"] = {}
    for idx, name in sorted(names.items()):
        if idx == 0:
            continue
        out["voxels"][name] = int(counts[idx])
        out["volumes_ml"][name] = round(float(counts[idx]) * voxel_ml, 3)
        if image is not None:
            out["hu"][name] = hu_statistics(image[labels == idx]) if counts[idx] else None
    if tumor_label is not None and tumor_label in names:
        mask = labels == tumor_label
        comp, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
        sizes = np.bincount(comp.ravel())[1:] if n else np.zeros(0, dtype=np.int64)
        out["tumor"] = {"volume_ml": round(float(mask.sum()) * voxel_ml, 3), "components": int(n),
                        "largest_ml": round(float(sizes.max() if n else 0) * voxel_ml, 3)}
        if image is not None:
            out["tumor"]["component_list"] = _components(comp, int(n), image, voxel_ml)
    return out


def _components(comp: np.ndarray, n: int, image: np.ndarray, voxel_ml: float) -> list[dict]:
    """Size, centroid and HU statistics of components ``1..n`` of ``comp``, largest first
    (numbered 1.. in that order)."""
    if n == 0:
        return []
    stats = cc3d.statistics(comp)
    flat = comp.ravel()
    fg = np.flatnonzero(flat)
    order = fg[np.argsort(flat[fg], kind="stable")]          # voxel indices grouped by component
    bounds = np.concatenate([[0], np.cumsum(stats["voxel_counts"][1:n + 1])]).astype(np.int64)
    values = image.ravel()[order]
    rows = []
    for c in range(1, n + 1):
        vox = int(stats["voxel_counts"][c])
        rows.append({"voxels": vox, "volume_ml": round(vox * voxel_ml, 3),
                     "centroid_zyx": [round(float(x), 2) for x in stats["centroids"][c]],
                     "hu": hu_statistics(values[bounds[c - 1]:bounds[c]])})
    rows.sort(key=lambda r: -r["voxels"])
    return [{"component": i + 1, **r} for i, r in enumerate(rows)]
