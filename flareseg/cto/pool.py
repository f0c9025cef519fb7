"""The CTO pool on disk: build it from cases (stage-3) and load it lazily (stage-5 data loading).

Layout of a pool folder::

    index.json            spacing, config, one record per object, rejected components, case errors
    objects/<id>.npz      image (Z, Y, X) float32|float16 normalised, label (Z, Y, X) uint8,
                          outer_air (Z, Y, X) bool: the object's air reaching its box faces

Each crop is normalised first and then resampled to the target (coarse) spacing — the order
nnU-Net's preprocessing uses — so pasted objects look like the coarse training data.  Context margins
are counted in voxels of that target spacing (converted to each source's voxels before cropping), so
objects from thin- and thick-slice scans carry context of the same size in mm.  With cleaning rules,
each source label is cleaned by stage-4's rules before extraction: no pooled object is one that
cleaning removes from the training labels.

The outside air an object carries (its source's air cut in with the context, or gas reaching the
box faces) is found in HU *before* normalisation (``AIR_HU``) and stored with the object:
normalised values cannot tell air from fat when nnU-Net's CT normalisation clips at a foreground
percentile above -500 HU (both become the clip floor; issue 25).  CutMix never pastes it.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from flareseg.config import CleaningConfig, CTOConfig, to_dict
from flareseg.anatomy import bbox_of, outer_air
from flareseg.cto.extract import extract_case, margin_ranges
from flareseg.io import InputError, atomic_path, read_json, write_json
from flareseg.labels import TUMOR

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
OBJECTS_DIR = "objects"
POOL_VERSION = 2          # 2: objects carry outer_air; margins scaled to the patch (issue 25)
AIR_HU = -500.0           # below: air (the body mask's threshold, flareseg.anatomy.body_mask)

Case = tuple[str, np.ndarray, np.ndarray, Sequence[float]]   # (case_id, image, label, spacing_zyx)


@dataclass(frozen=True)
class CTO:
    """One tumor object at pool spacing: normalised image and full label, both ``(Z, Y, X)``."""

    id: str
    image: np.ndarray
    label: np.ndarray
    record: dict[str, Any]
    outer_air: np.ndarray | None = None   # bool (Z, Y, X): not pasted (see module docstring)


def resampled_shape(shape: Sequence[int], src_spacing: Sequence[float],
                    dst_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape of a ``(Z, Y, X)`` grid after resampling (nnU-Net's rule: round, at least 1)."""
    return tuple(max(1, int(round(n * float(a) / float(b))))
                 for n, a, b in zip(shape, src_spacing, dst_spacing))


def resample_crop(image: np.ndarray, label: np.ndarray, src_spacing: Sequence[float],
                  dst_spacing: Sequence[float], image_order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Resample a crop ``(Z, Y, X)`` to ``dst_spacing`` (mm): image spline ``image_order``, label nearest.

    Both use the same voxel-extent (``grid_mode``) alignment, so image and label stay registered.
    """
    new = resampled_shape(label.shape, src_spacing, dst_spacing)
    if tuple(new) == tuple(label.shape):
        return image.copy(), label.copy()
    zoom = [n / o for n, o in zip(new, label.shape)]
    img = ndimage.zoom(image, zoom, order=image_order, mode="nearest", grid_mode=True)
    lab = ndimage.zoom(label, zoom, order=0, mode="nearest", grid_mode=True)
    if img.shape != new or lab.shape != new:  # pragma: no cover - scipy rounding guard
        raise RuntimeError(f"resampling gave {img.shape}/{lab.shape}, expected {new}")
    return img, lab


def _save_object(path: Path, image: np.ndarray, label: np.ndarray, outer_air: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, image=image, label=label, outer_air=outer_air)


def resample_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` mask resampled to ``shape`` with the label's nearest-neighbour rule."""
    if tuple(shape) == tuple(mask.shape):
        return mask.copy()
    zoom = [n / o for n, o in zip(shape, mask.shape)]
    return ndimage.zoom(mask.astype(np.uint8), zoom, order=0, mode="nearest", grid_mode=True) > 0


def build_pool(cases: Iterable[Case], out_dir: os.PathLike | str, cfg: CTOConfig,
               target_spacing_zyx: Sequence[float],
               normalize: Callable[[np.ndarray], np.ndarray],
               patch_size: Sequence[int] | None = None, abdomen_margin_mm: float = 20.0,
               image_order: int = 3, dtype: str = "float32", progress: bool = True,
               cleaning: CleaningConfig | None = None,
               ) -> dict[str, Any]:
    """Extract, normalise, resample and store every CTO of ``cases``; return the index (also written).

    ``cases`` yields ``(case_id, image (Z, Y, X) HU, label (Z, Y, X) FLARE indices, spacing_zyx mm)``.
    ``normalize`` maps a float32 HU crop to training intensities (the coarse plans' CT
    normalisation).  ``patch_size`` (voxels at the target spacing) enables the extent filter.
    Margins (``cfg.margin_z``, ``cfg.margin_xy``) are voxels at ``target_spacing_zyx``, scaled
    to ``patch_size`` by :func:`~flareseg.cto.extract.margin_ranges` (``cfg.margin_patch``).
    ``cleaning``: stage-4's rules, applied to every source label before extraction (the pipeline
    always passes ``cfg.cleaning``; ``None`` takes the labels as already clean).
    A case that fails (bad shapes, ...) is logged and listed under ``errors``; the others go on.
    Same ``cfg.seed`` and cases -> identical pool (margins depend on seed and case id only).
    """
    out = Path(out_dir)
    (out / OBJECTS_DIR).mkdir(parents=True, exist_ok=True)
    target = [float(s) for s in target_spacing_zyx]
    patch_mm = None if patch_size is None else [p * s for p, s in zip(patch_size, target)]
    objects: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    n_cases = 0
    ranges = margin_ranges(cfg, patch_size)
    for case_id, image, label, spacing in tqdm(cases, desc="CTO pool", unit="case",
                                               disable=not progress):
        n_cases += 1
        try:
            crops, rej = extract_case(case_id, image, label, spacing, cfg, patch_mm,
                                      abdomen_margin_mm, margin_spacing_zyx=target,
                                      cleaning=cleaning, ranges=ranges)
        except ValueError as e:
            log.error("case %s skipped: %s", case_id, e)
            errors.append({"case_id": case_id, "error": str(e)})
            continue
        rejected.extend(rej)
        for crop in crops:
            rec = dict(crop.record)
            img = np.asarray(normalize(crop.image.astype(np.float32)), dtype=np.float32)
            img, lab = resample_crop(img, crop.label, spacing, target, image_order)
            air = resample_mask(outer_air(crop.image < AIR_HU, crop.label), lab.shape)
            tumor = int(np.count_nonzero(lab == TUMOR))
            if tumor == 0:
                rejected.append({k: rec[k] for k in ("id", "case_id", "component", "voxels", "bbox")}
                                | {"reason": "no tumor voxel left after resampling"})
                continue
            rel = f"{OBJECTS_DIR}/{rec['id']}.npz"
            _save_object(out / rel, img.astype(dtype), lab.astype(np.uint8), air)
            tb = bbox_of(lab == TUMOR)
            rec.update(file=rel, shape=list(lab.shape), tumor_voxels_resampled=tumor,
                       tumor_box=[[int(b.start), int(b.stop)] for b in tb],
                       outer_air_fraction=round(float(air.mean()), 4))
            objects.append(rec)
    index = {"version": POOL_VERSION, "spacing_zyx": target, "dtype": dtype,
             "patch_size": None if patch_size is None else [int(p) for p in patch_size],
             "margin_ranges": [list(r) for r in ranges], "air_hu": AIR_HU,
             "abdomen_margin_mm": float(abdomen_margin_mm), "config": to_dict(cfg),
             "cleaning": None if cleaning is None else to_dict(cleaning),
             "n_cases": n_cases, "objects": objects, "rejected": rejected, "errors": errors}
    write_json(index, out / INDEX_NAME)
    log.info("CTO pool: %d objects from %d cases (%d rejected, %d case errors) -> %s",
             len(objects), n_cases, len(rejected), len(errors), out)
    return index


class CTOPool(Mapping):
    """Read-only mapping ``id -> CTO`` over a pool folder; objects load on first use (LRU cache).

    Picklable (only paths, the index and a small cache), so nnU-Net data-loader workers can hold it.
    """

    def __init__(self, root: os.PathLike | str, index: dict[str, Any], cache_size: int = 64):
        self.root = Path(root)
        self.index = index
        self.records: dict[str, dict[str, Any]] = {r["id"]: r for r in index["objects"]}
        self.spacing_zyx: tuple[float, ...] = tuple(index["spacing_zyx"])
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, CTO] = OrderedDict()

    @property
    def ids(self) -> tuple[str, ...]:
        """Object ids in index order (the order :func:`~flareseg.cto.cutmix.sample_params` draws from)."""
        return tuple(self.records)

    def shape(self, obj_id: str) -> tuple[int, int, int]:
        return tuple(self.records[obj_id]["shape"])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, obj_id: object) -> bool:  # without loading the object
        return obj_id in self.records

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __getitem__(self, obj_id: str) -> CTO:
        hit = self._cache.get(obj_id)
        if hit is not None:
            self._cache.move_to_end(obj_id)
            return hit
        rec = self.records[obj_id]
        path = self.root / rec["file"]
        try:
            with np.load(path) as z:
                image, label, air = z["image"], z["label"], z["outer_air"]
        except (OSError, KeyError, ValueError) as e:
            raise InputError(path, f"unreadable CTO file ({e})") from None
        if image.shape != tuple(rec["shape"]) or label.shape != image.shape or air.shape != image.shape:
            raise InputError(path, f"shape {image.shape}/{label.shape}/{air.shape} != index {rec['shape']}")
        for a in (image, label, air):
            a.setflags(write=False)
        obj = CTO(obj_id, image, label, rec, air.astype(bool, copy=False))
        if self.cache_size > 0:
            self._cache[obj_id] = obj
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return obj


def load_pool(pool_dir: os.PathLike | str, cache_size: int = 64) -> CTOPool:
    """Open a pool folder written by :func:`build_pool` (reads only ``index.json``)."""
    p = Path(pool_dir) / INDEX_NAME
    if not p.exists():
        raise InputError(p, "CTO pool index not found (run stage-3 first)")
    try:
        index = read_json(p)
    except ValueError as e:
        raise InputError(p, f"not valid JSON ({e})") from None
    if index.get("version") != POOL_VERSION or "objects" not in index:
        raise InputError(p, f"not a CTO pool index of version {POOL_VERSION} (an older pool: "
                            "rerun stage-3)")
    return CTOPool(pool_dir, index, cache_size)
