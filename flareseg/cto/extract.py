"""Tumor objects of one case: connected components, context margins, crops and index records.

A *context-aware tumor object* (CTO) is a box around one connected tumor component, grown by a
random context margin on every side and clipped to the image.  Margins are drawn in voxels of the
*margin spacing* (the coarse training spacing in the pipeline: the paper's voxel numbers read at the
resolution the model trains on) and converted to source voxels, so an object's context has the same
size in mm whatever its source's slice thickness.  When cleaning rules are given, the source label is
cleaned first with exactly stage-4's rules (:func:`flareseg.cleaning.clean_label`), so every pooled
object — and the context label around it — is what the coarse model trains on.  The crop keeps the image and the
FULL label inside the box: the tumor, the organs around it and — when another tumor component
reaches into the box — that tumor too (it is real tumor; relabelling it would teach the model a
wrong background).

Arrays are ``(Z, Y, X)``; spacing is ``(z, y, x)`` in mm; boxes are half-open voxel slices in the
source image.  Everything here is pure numpy (no I/O); :mod:`flareseg.cto.pool` stores the crops.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import cc3d
import numpy as np
from scipy import ndimage

from flareseg.anatomy import BBox, abdomen_region, bbox_of, organ_mask
from flareseg.cleaning.clean import clean_label
from flareseg.config import CleaningConfig, CTOConfig
from flareseg.labels import ORGANS, TUMOR

log = logging.getLogger(__name__)

#: scipy structuring-element rank for each cc3d connectivity (6 -> faces, 18 -> +edges, 26 -> +corners).
_RANK = {6: 1, 18: 2, 26: 3}


@dataclass(frozen=True)
class Component:
    """One connected tumor component: its number, tight box (source voxels), size and local mask."""

    index: int            # 1-based, in cc3d scan order (stable for a given label map)
    bbox: BBox            # tight box, half-open slices in the source (Z, Y, X) grid
    voxels: int
    mask: np.ndarray      # bool, shape of ``bbox``: the component's own voxels


@dataclass(frozen=True)
class TumorCrop:
    """A CTO cut from its source case, still at source spacing (``record`` is its index entry)."""

    image: np.ndarray     # (Z, Y, X), source dtype/units
    label: np.ndarray     # (Z, Y, X), full label in the crop box
    record: dict[str, Any]


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """Random generator of one case: depends on the seed and the case id only (not case order)."""
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode())])


def find_tumor_objects(label: np.ndarray, connectivity: int = 26,
                       tumor_label: int = TUMOR) -> list[Component]:
    """Connected components of ``label == tumor_label`` (cc3d), in cc3d's scan order.

    ``label`` is ``(Z, Y, X)``; the search runs inside the tumor's bounding box only, so large
    scans with small tumors stay fast.
    """
    if label.ndim != 3:
        raise ValueError(f"label must be (Z, Y, X), got shape {label.shape}")
    if connectivity not in _RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    tumor = label == tumor_label
    outer = bbox_of(tumor)
    if outer is None:
        return []
    cc, n = cc3d.connected_components(np.ascontiguousarray(tumor[outer]), connectivity=connectivity,
                                      return_N=True)
    stats = cc3d.statistics(cc)
    off = [sl.start for sl in outer]
    out = []
    for i in range(1, int(n) + 1):
        local = stats["bounding_boxes"][i]
        box = tuple(slice(s.start + o, s.stop + o) for s, o in zip(local, off))
        out.append(Component(index=i, bbox=box, voxels=int(stats["voxel_counts"][i]),
                             mask=cc[local] == i))
    return out


def margin_ranges(cfg: CTOConfig, patch_size: Sequence[int] | None = None) -> tuple[tuple[int, int], ...]:
    """Inclusive margin ranges ``((z_lo, z_hi), (y_lo, y_hi), (x_lo, x_hi))`` in voxels of the
    margin spacing: ``cfg.margin_z``/``cfg.margin_xy``, scaled per axis by
    ``patch_size / cfg.margin_patch`` (both bounds rounded half up) when both are given.

    The paper's margins (z 8-16, in-plane 24-32 voxels) belong to its 32x192x192 coarse patch;
    read literally at a smaller patch they would cut the source's whole cross-section, outside
    air included, and no such object fits inside a training sample's body (issue 25: 0 of 5000
    samples pasted in the demo).  Scaled, the context fills the same fraction of the patch.
    """
    ranges = [tuple(cfg.margin_z), tuple(cfg.margin_xy), tuple(cfg.margin_xy)]
    ref = cfg.margin_patch
    if ref is None or patch_size is None:
        return tuple((int(lo), int(hi)) for lo, hi in ranges)
    out = []
    for (lo, hi), p, r in zip(ranges, patch_size, ref):
        f = float(p) / float(r)
        out.append((int(np.floor(lo * f + 0.5)), int(np.floor(hi * f + 0.5))))
    return tuple(out)


def sample_margins(rng: np.random.Generator, n_objects: int, cfg: CTOConfig,
                   ranges: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Context margins in voxels, int array ``(n_objects, 3, 2)`` = [object, axis (z,y,x), side (before, after)].

    Every side of every object is drawn independently and uniformly from the inclusive range of
    its axis: ``ranges`` (e.g. :func:`margin_ranges`), by default ``cfg.margin_z`` (z) and
    ``cfg.margin_xy`` (y and x), so the tumor also sits at a random position inside its box.
    """
    ranges = list(ranges) if ranges is not None else [cfg.margin_z, cfg.margin_xy, cfg.margin_xy]
    for lo, hi in ranges:
        if lo < 0 or hi < lo:
            raise ValueError(f"margin range ({lo}, {hi}) must satisfy 0 <= low <= high")
    lo = np.array([r[0] for r in ranges])[None, :, None]
    hi = np.array([r[1] for r in ranges])[None, :, None]
    return rng.integers(lo, hi + 1, size=(int(n_objects), 3, 2))


def margins_to_source(margins: np.ndarray, margin_spacing_zyx: Sequence[float],
                      source_spacing_zyx: Sequence[float]) -> np.ndarray:
    """Margins drawn in voxels of ``margin_spacing_zyx`` (mm) as source voxels: ``(..., 3, 2)`` int.

    Each side keeps its physical length, rounded half up to whole source voxels, so the context
    differs from the drawn length by at most half a source voxel per side.
    """
    m = np.asarray(margins, dtype=np.float64)
    dst = np.asarray([float(s) for s in margin_spacing_zyx])
    src = np.asarray([float(s) for s in source_spacing_zyx])
    ok = dst.shape == src.shape == (3,) and np.all(np.isfinite(dst) & np.isfinite(src))
    if m.shape[-2:] != (3, 2) or not ok or not (np.all(dst > 0) and np.all(src > 0)):
        raise ValueError(f"margins {m.shape} must be (..., 3, 2) and spacings 3 positive values, got "
                         f"{tuple(margin_spacing_zyx)} / {tuple(source_spacing_zyx)}")
    return np.floor(m * (dst / src)[:, None] + 0.5).astype(np.int64)


def crop_box(bbox: BBox, margins: np.ndarray, shape: Sequence[int]) -> BBox:
    """``bbox`` grown by ``margins`` ``(3, 2)`` voxels per side, clipped to ``shape``."""
    m = np.asarray(margins).reshape(3, 2)
    return tuple(slice(max(0, sl.start - int(a)), min(int(n), sl.stop + int(b)))
                 for sl, (a, b), n in zip(bbox, m, shape))  # type: ignore[return-value]


def crop_object(image: np.ndarray, label: np.ndarray, component_bbox: BBox,
                margins: np.ndarray) -> tuple[np.ndarray, np.ndarray, BBox]:
    """Cut image and full label ``(Z, Y, X)`` in the component box grown by ``margins`` ``(3, 2)``.

    Returns copies ``(img_crop, lab_crop, crop_bbox)``; the box is clipped to the image borders.
    """
    if image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} != label shape {label.shape}")
    box = crop_box(component_bbox, margins, label.shape)
    return image[box].copy(), label[box].copy(), box


def organs_touched(label: np.ndarray, comp: Component, connectivity: int = 26) -> list[int]:
    """Organ classes within one voxel of the component (dilation with the given connectivity)."""
    shape = label.shape
    box = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(comp.bbox, shape))
    mask = np.zeros([b.stop - b.start for b in box], dtype=bool)
    inner = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(comp.bbox, box))
    mask[inner] = comp.mask
    ring = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, _RANK[connectivity]))
    ring &= ~mask
    found = np.unique(label[box][ring])
    return [int(c) for c in found if int(c) in ORGANS]


def organ_distance_mm(lab_crop: np.ndarray, comp_mask_in_crop: np.ndarray,
                      spacing: Sequence[float], touching: bool) -> float | None:
    """Distance (mm, voxel centre to centre) from the component to the nearest organ in the crop.

    0 when the component touches an organ; ``None`` when no organ lies inside the crop box (the
    nearest organ is farther than the context margin).
    """
    if touching:
        return 0.0
    organ = organ_mask(lab_crop)
    if not organ.any():
        return None
    dist = ndimage.distance_transform_edt(~organ, sampling=[float(s) for s in spacing])
    return float(dist[comp_mask_in_crop].min())


def _box_json(box: BBox) -> list[list[int]]:
    return [[int(s.start), int(s.stop)] for s in box]


def _reject_reason(comp: Component, spacing: Sequence[float], cfg: CTOConfig,
                   patch_extent_mm: Sequence[float] | None, region: np.ndarray | None) -> str | None:
    if comp.voxels < cfg.min_voxels:
        return f"fewer than {cfg.min_voxels} voxels"
    if patch_extent_mm is not None:
        ext = [(s.stop - s.start) * float(sp) for s, sp in zip(comp.bbox, spacing)]
        lim = [cfg.max_extent_fraction * float(p) for p in patch_extent_mm]
        if any(e > m for e, m in zip(ext, lim)):
            return (f"extent {[round(e, 1) for e in ext]} mm exceeds {cfg.max_extent_fraction} "
                    f"of the patch {[round(p, 1) for p in patch_extent_mm]} mm")
    if region is not None and not region[comp.bbox][comp.mask].any():
        return "outside the abdominal region"
    return None


def _integer_label(label: np.ndarray, case_id: str) -> np.ndarray:
    """``label`` as an integer map (a float map with whole values is converted), else ValueError."""
    if label.dtype.kind in "ui":
        return label
    if label.dtype.kind == "f" and label.size and np.all(np.isfinite(label)) \
            and np.array_equal(label, np.round(label)) and label.min() >= 0 and label.max() <= 255:
        return label.astype(np.uint8)
    raise ValueError(f"case {case_id}: label map must hold whole class numbers, got dtype {label.dtype}")


def clean_source(case_id: str, image: np.ndarray, label: np.ndarray, spacing: Sequence[float],
                 cleaning: CleaningConfig) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The source label cleaned by stage-4's rules (same function, same ``cleaning.*`` keys), and a
    rejection record per removed tumor component (other classes' specks are cleaned silently).

    ``image`` (HU) gives the body mask for the abdominal-region rule when the label has no organs.
    """
    cleaned, removals = clean_label(_integer_label(label, case_id), spacing, cleaning,
                                    image=image, case_id=case_id)
    rejected = [{"case_id": case_id, "voxels": r.voxels, "bbox": [list(b) for b in r.bbox],
                 "reason": f"cleaning: {r.reason}", "distance_mm": r.distance_mm}
                for r in removals if r.cls == TUMOR]
    return cleaned, rejected


def extract_case(case_id: str, image: np.ndarray, label: np.ndarray, spacing: Sequence[float],
                 cfg: CTOConfig, patch_extent_mm: Sequence[float] | None = None,
                 abdomen_margin_mm: float = 20.0, tumor_label: int = TUMOR,
                 margin_spacing_zyx: Sequence[float] | None = None,
                 cleaning: CleaningConfig | None = None,
                 ranges: Sequence[Sequence[int]] | None = None,
                 ) -> tuple[list[TumorCrop], list[dict[str, Any]]]:
    """All CTOs of one case at source spacing, plus one record per rejected component.

    ``image``/``label`` are ``(Z, Y, X)``, image in HU (used for the body mask when the label has
    no organs).  With ``cleaning``, the label is first cleaned by :func:`clean_source` (stage-4's
    rules: components under ``cleaning.min_voxels``, tumors outside the abdomen, tumors farther than
    ``cleaning.max_organ_distance_mm`` from every organ), and objects and their context are cut from
    the cleaned label; the removed tumors are listed as rejected (``"cleaning: <rule>"``).
    Then the pool's own filters, which can only drop more: ``cfg.min_voxels``; tumor box extent
    (mm) per axis above ``cfg.max_extent_fraction`` x ``patch_extent_mm`` (skipped when ``None``);
    with ``cfg.exclude_outside_abdomen``, components with no voxel inside
    :func:`flareseg.anatomy.abdomen_region` (``abdomen_margin_mm``).

    Margins are drawn in voxels of ``margin_spacing_zyx`` (mm; ``None``: the source spacing) and
    converted by :func:`margins_to_source`; ``ranges`` (per axis, see :func:`margin_ranges`)
    replaces ``cfg.margin_z``/``cfg.margin_xy`` when given.  They are drawn for every component from
    :func:`case_rng` (``cfg.seed``, ``case_id``) before filtering, so an object's box does not
    depend on which other objects pass the filters.
    """
    if image.shape != label.shape:
        raise ValueError(f"case {case_id}: image shape {image.shape} != label shape {label.shape}")
    cleaned_away: list[dict[str, Any]] = []
    if cleaning is not None:
        label, cleaned_away = clean_source(case_id, image, label, spacing, cleaning)
    comps = find_tumor_objects(label, cfg.connectivity, tumor_label)
    drawn = sample_margins(case_rng(cfg.seed, case_id), len(comps), cfg, ranges)
    margins = drawn if margin_spacing_zyx is None else \
        margins_to_source(drawn, margin_spacing_zyx, spacing)
    margin_spacing = [float(s) for s in (spacing if margin_spacing_zyx is None else margin_spacing_zyx)]
    region = None
    if comps and cfg.exclude_outside_abdomen:
        region = abdomen_region(label, spacing, abdomen_margin_mm, image=image)
        if not region.any():
            log.warning("case %s: no organ labels and an empty body mask; abdomen filter skipped",
                        case_id)
            region = None
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    crops: list[TumorCrop] = []
    rejected = cleaned_away
    for comp, m, d in zip(comps, margins, drawn):
        obj_id = f"{case_id}_t{comp.index:03d}"
        reason = _reject_reason(comp, spacing, cfg, patch_extent_mm, region)
        if reason is not None:
            rejected.append({"id": obj_id, "case_id": case_id, "component": comp.index,
                             "voxels": comp.voxels, "bbox": _box_json(comp.bbox), "reason": reason})
            continue
        img_c, lab_c, box = crop_object(image, label, comp.bbox, m)
        touched = organs_touched(label, comp, cfg.connectivity)
        local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(comp.bbox, box))
        comp_in_crop = np.zeros(lab_c.shape, dtype=bool)
        comp_in_crop[local] = comp.mask
        record = {
            "id": obj_id, "case_id": case_id, "component": comp.index,
            "voxels": comp.voxels, "volume_mm3": round(comp.voxels * voxel_mm3, 3),
            "bbox": _box_json(comp.bbox), "crop_bbox": _box_json(box),
            "margins": m.tolist(), "margins_drawn": d.tolist(), "margin_spacing_zyx": margin_spacing,
            "context_mm": [[round(float(a) * float(sp), 3) for a in side] for side, sp in zip(m, spacing)],
            "source_spacing_zyx": [float(s) for s in spacing],
            "organs_touched": touched,
            "organ_distance_mm": organ_distance_mm(lab_c, comp_in_crop, spacing, bool(touched)),
        }
        crops.append(TumorCrop(image=img_c, label=lab_c, record=record))
    log.debug("case %s: %d tumor components, %d kept", case_id, len(comps), len(crops))
    return crops, rejected
