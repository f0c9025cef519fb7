"""Per-case statistics of a predicted label map: class volumes (mL), HU statistics per class and
per tumor component (with the image), and tumor burden.  Schema: docs/statistics.md."""
from __future__ import annotations

from typing import Mapping, Sequence

import cc3d
import numpy as np

from flareseg.labels import TUMOR

PERCENTILES = (5, 50, 95)


def hu_statistics(values: np.ndarray) -> dict | None:
    """``{"mean", "std", "min", "max", "p5", "p50", "p95"}`` of the HU ``values`` (population std,
    ddof 0; percentiles linearly interpolated, numpy's default), rounded to 0.01 HU; None when empty."""
    if values.size == 0:
        return None
    v = values.astype(np.float64, copy=False)
    p = np.percentile(v, PERCENTILES)
    return {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2),
            "min": round(float(v.min()), 2), "max": round(float(v.max()), 2),
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


def as_array(obj, spacing_zyx: Sequence[float] | None = None, name: str = "image"):
    """``(array (Z, Y, X), Geometry or None, source)`` of a path (read through
    :func:`flareseg.io.read_image`, the verified read), a ``SimpleITK.Image``, or a numpy array
    (whose ``spacing_zyx`` in mm must then be given)."""
    import os

    import SimpleITK as sitk

    from flareseg.io import Geometry, read_image
    if isinstance(obj, (str, os.PathLike)):
        img = read_image(obj)
        return sitk.GetArrayFromImage(img), Geometry.of(img), str(obj)
    if isinstance(obj, sitk.Image):
        return sitk.GetArrayFromImage(obj), Geometry.of(obj), f"<SimpleITK {name}>"
    if isinstance(obj, np.ndarray):
        if obj.ndim != 3:
            raise ValueError(f"{name}: a (Z, Y, X) array is needed, got shape {obj.shape}")
        return obj, None, f"<array {name}>"
    raise TypeError(f"{name}: expected a path, a SimpleITK.Image or a numpy array, got {type(obj).__name__}")


def segmentation_statistics(image, seg, spacing_zyx: Sequence[float] | None = None) -> dict:
    """Volumes (mL) and HU statistics (mean, std, min, max, p5/p50/p95) per class and per tumor
    component (26-connected, cc3d) of an existing segmentation ``seg`` of the CT ``image``.

    Each of ``image`` and ``seg``: a path, a ``SimpleITK.Image`` or a ``(Z, Y, X)`` numpy array;
    arrays need ``spacing_zyx`` (mm) unless the other one carries a geometry.  Two geometries must
    agree (:func:`flareseg.io.geometry_mismatch`, ValueError naming the difference).  Returns
    :func:`label_statistics` plus ``image``, ``segmentation`` (their sources) and ``spacing_zyx``."""
    from flareseg.io import geometry_mismatch
    from flareseg.labels import CLASS_NAMES
    img, gi, src_i = as_array(image, spacing_zyx, "image")
    lab, gs, src_s = as_array(seg, spacing_zyx, "segmentation")
    if gi is not None and gs is not None:
        bad = geometry_mismatch(gi, gs)
        if bad:
            raise ValueError(f"{src_s}: segmentation grid differs from the image's ({'; '.join(bad)})")
    if img.shape != lab.shape:
        raise ValueError(f"{src_s}: segmentation shape {lab.shape} differs from the image's {img.shape}")
    geo = gi or gs
    if spacing_zyx is None:
        if geo is None:
            raise ValueError("spacing_zyx (mm) is needed when image and segmentation are both arrays")
        spacing_zyx = geo.spacing_zyx
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.array_equal(lab, np.round(lab)):
            raise ValueError(f"{src_s}: segmentation holds non-integer values")
        lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() > max(CLASS_NAMES)):
        raise ValueError(f"{src_s}: labels outside 0..{max(CLASS_NAMES)} (found {int(lab.min())}..{int(lab.max())})")
    out = label_statistics(lab, spacing_zyx, CLASS_NAMES, image=img)
    return {"image": src_i, "segmentation": src_s, "spacing_zyx": [float(s) for s in spacing_zyx], **out}
