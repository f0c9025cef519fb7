"""Context-aware CutMix (the paper's Eq. 2): paste tumor objects into samples without tumor labels.

``x' = M * x_cto + (1 - M) * x`` and the same for the label, where ``M`` is the CTO's box centred
at a paste centre drawn uniformly among the admissible voxels of the sample (below).

**Where the box lands.**  The paper pastes into the abdominal region.  A centre is admissible when
it lies inside the abdominal region (the organ box grown by ``cfg.abdomen_margin_mm``; without
organ voxels, the body) *and the whole box lies inside the sample's body*: every voxel of the box
that falls inside the array is body (``image > body_threshold``, largest connected region, holes
filled per slice) or beyond the scan (nnU-Net's padding, negative label).  Parts of the box beyond
the array or the scan are cut: the array is a training patch and the scan's end is not the body's
edge (a crop of a short scan is padded along z, and the body goes on past it); the centre itself
is body.
A drawn object with no admissible centre is not pasted (``CutMixParams.unplaced`` counts it; a
sample none of whose objects fit gets no paste and the loader counts it).  The object's own air
that touches its box faces (the source's outside air cut in with the context; ``air_threshold``
in :func:`apply`) is not pasted either: there the sample keeps its own image and label, so no
source body edge or outside air is carried into the target's abdomen.  Enclosed air (bowel gas
inside the box) is pasted.

**What the pasted box asserts.**  An object keeps the full label of its source case inside its box;
classes the source does not annotate are 0 there even where its image shows them (a liver+tumor
case's kidney).  A pasted box can therefore only assert the classes annotated in *both* the source
(``ObjectInfo.label_type``) and the sample.  We keep the paste and shrink the sample's label type
to ``(sample type ∩ source types of its pasted objects) ∪ {tumor}`` (``CutMixParams.label_type``,
what the loader hands to the loss): the dropped classes follow the merge-max rule for unannotated
classes (merged with background), in the box and — for one label type per sample — in the rest of
the sample, where :func:`apply` sets them to 0 so the label holds only classes of its type.  Why
not exclude incompatible objects instead: with mostly partial tumor sources (FLARE23's liver-,
kidney-, pancreas-tumor sets) the few fully annotated ones would be pasted into every fully
annotated sample, collapsing the pool's diversity.  The price is organ supervision of the dropped
classes in that sample for that iteration; completing partial sources with the fine model
(``pseudolabel.fill_in_partial``, as stage-2 always does for tumor-only cases) removes it.

Random choices live in :func:`sample_params` (one :class:`CutMixParams` per sample) and
:func:`apply` is deterministic, so one seed reproduces a batch.  Both take numpy arrays ``(Z, Y, X)``
or channel-first ``(C, Z, Y, X)`` (nnU-Net's data-loader layout, already at pool spacing and
normalised like the pool), never mutate their inputs, and ignore negative label values (nnU-Net's
``-1`` "outside the nonzero crop" marker) when finding the abdomen.  Without ``objects`` (shapes and
source types unknown) :func:`sample_params` falls back to drawing the centre in the abdominal
region only, and the pasted label asserts the sample's type (``keep_classes``) — use it for tests
of the mechanics only.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
from scipy import ndimage

from flareseg.anatomy import BBox, bbox_of, body_mask, expand_bbox, organ_mask
from flareseg.anatomy import outer_air as anatomy_outer_air
from flareseg.config import CutMixConfig
from flareseg.labels import TUMOR, LabelType, has_tumor, label_type

log = logging.getLogger(__name__)


class _Object(Protocol):
    image: np.ndarray   # (Z, Y, X)
    label: np.ndarray   # (Z, Y, X)


@dataclass(frozen=True)
class ObjectInfo:
    """What placement needs to know of a pool object without loading it: its ``(Z, Y, X)`` shape
    (pool voxels) and the label type of its source case (the classes its label asserts, tumor
    included)."""

    shape: tuple[int, int, int]
    label_type: LabelType
    tumor_box: tuple[tuple[int, int], ...] | None = None   # (start, stop) per axis, pool voxels


#: context kept when the whole object fits nowhere: fractions of its drawn margins, tried in turn
CONTEXT_STEPS = (1.0, 0.75, 0.5, 0.25, 0.0)


def trimmed_box(info: ObjectInfo, fraction: float) -> tuple[tuple[int, int], ...]:
    """Sub-box ``(start, stop)`` per axis of an object keeping ``fraction`` of the context on each
    side of its tumor box (the whole object at 1, the tumor box at 0)."""
    if info.tumor_box is None or fraction >= 1.0:
        return tuple((0, int(n)) for n in info.shape)
    out = []
    for (a, b), n in zip(info.tumor_box, info.shape):
        out.append((int(a) - int(round(fraction * int(a))), int(b) + int(round(fraction * (int(n) - int(b))))))
    return tuple(out)


@dataclass(frozen=True)
class Paste:
    """One pasted object: its pool id, the voxel ``(z, y, x)`` its box is centred on, and the part
    of the object pasted (``box``: ``(start, stop)`` per axis; None: all of it)."""

    object_id: str
    centre: tuple[int, int, int]
    box: tuple[tuple[int, int], ...] | None = None

    def piece(self, obj: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(image, label, outer_air or None)`` of ``obj`` (a pool object) inside ``box``."""
        sl = (slice(None),) * 3 if self.box is None else tuple(slice(a, b) for a, b in self.box)
        air = getattr(obj, "outer_air", None)
        return obj.image[sl], obj.label[sl], None if air is None else air[sl]


@dataclass(frozen=True)
class CutMixParams:
    """What :func:`apply` pastes into one sample; no pastes means the sample is left as is.

    ``label_type``: the sample's label type after the pastes (``None`` when the source types were
    not known: then :func:`apply`'s ``keep_classes`` decides); ``unplaced``: drawn objects that had
    no admissible centre (box not fitting inside the body) and were not pasted."""

    pastes: tuple[Paste, ...] = ()
    label_type: LabelType | None = None
    unplaced: int = 0

    @property
    def applied(self) -> bool:
        return bool(self.pastes)

    @property
    def no_fit(self) -> bool:
        """Objects were drawn for this sample but none fitted: the sample got no paste."""
        return self.unplaced > 0 and not self.pastes


def _spatial(arr: np.ndarray, name: str) -> np.ndarray:
    """The ``(Z, Y, X)`` view of a ``(Z, Y, X)`` or ``(1, Z, Y, X)`` array."""
    if arr.ndim == 3:
        return arr
    if arr.ndim == 4 and arr.shape[0] == 1:
        return arr[0]
    raise ValueError(f"{name} must be (Z, Y, X) or (1, Z, Y, X), got shape {arr.shape}")


def _clean_label(label: np.ndarray) -> np.ndarray:
    lab = label if np.issubdtype(label.dtype, np.integer) else label.astype(np.int16)
    return np.where(lab < 0, 0, lab) if lab.size and lab.min() < 0 else lab


def object_infos(pool: Mapping[str, Any], case_types: Mapping[str, Iterable[int]]) -> dict[str, ObjectInfo]:
    """:class:`ObjectInfo` of every object of ``pool`` (a :class:`~flareseg.cto.pool.CTOPool`, read
    from its index without loading objects, or any mapping ``id -> CTO``).

    The source type is the record's ``label_type`` when the pool index carries one, else
    ``case_types[record["case_id"]]`` (the training set's ``label_types.json``: for a tumor-only
    case filled in by stage-2 that is the filled type, matching the label the object was cut
    from), else tumor only (the object then asserts nothing but its tumor; logged).
    """
    records = getattr(pool, "records", None)
    out, unknown = {}, []
    for oid in pool:
        rec = records[oid] if records is not None else dict(getattr(pool[oid], "record", {}) or {})
        shape = tuple(int(s) for s in rec["shape"]) if "shape" in rec else tuple(pool[oid].label.shape)
        t = rec.get("label_type")
        if t is None:
            t = case_types.get(str(rec.get("case_id")))
        if t is None:
            unknown.append(oid)
            t = ()
        tb = rec.get("tumor_box")
        out[oid] = ObjectInfo(shape, label_type(set(t) | {TUMOR}),  # type: ignore[arg-type]
                              None if tb is None else tuple((int(a), int(b)) for a, b in tb))
    if unknown:
        log.warning("CutMix: %d of %d pool objects have no known source label type (e.g. %s); they "
                    "assert only their tumor when pasted", len(unknown), len(out), unknown[0])
    return out


def abdomen_box(label: np.ndarray, spacing: Sequence[float], margin_mm: float) -> BBox | None:
    """Organ bounding box grown by ``margin_mm`` — the box that :func:`flareseg.anatomy.abdomen_region`
    fills — or ``None`` without organ voxels.  ``label`` ``(Z, Y, X)``, negatives ignored."""
    lab = _clean_label(label)
    bb = bbox_of(organ_mask(lab))
    return None if bb is None else expand_bbox(bb, margin_mm, spacing, lab.shape)


def sample_body(label: np.ndarray, image: np.ndarray | None, body_threshold: float) -> np.ndarray:
    """Body mask ``(Z, Y, X)`` of a sample: :func:`flareseg.anatomy.body_mask` of ``image`` (in its
    own units, ``body_threshold``) with nnU-Net's padding (negative label) outside; without an
    image, every non-padding voxel."""
    lab = _spatial(label, "label")
    inside = lab >= 0
    if image is None:
        return inside
    img = _spatial(image, "image")
    return body_mask(np.where(inside, img, -np.inf), body_threshold)


def central_box(crop_shape: Sequence[int], patch_shape: Sequence[int]) -> BBox:
    """The centred ``patch_shape`` box of a ``crop_shape`` array (each side clipped to the array):
    where nnU-Net's spatial augmentation (no random crop) cuts the final patch from its larger
    pre-augmentation crop."""
    out = []
    for n, p in zip(crop_shape, patch_shape):
        lo = max(0, (int(n) - int(p)) // 2)
        out.append(slice(lo, min(int(n), lo + int(p))))
    return tuple(out)  # type: ignore[return-value]


def fit_centres(body: np.ndarray, obj_shape: Sequence[int], beyond: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(Z, Y, X)``: centres at which a box of ``obj_shape`` (placed as in
    :func:`paste_boxes`) has every voxel that falls inside the array in ``body`` or in ``beyond``
    (voxels beyond the scan, nnU-Net's padding: like the array border, the box is cut there)."""
    outside = ~body if beyond is None else ~(body | beyond)
    outside = outside.view(np.uint8)
    blocked = ndimage.maximum_filter(outside, size=[int(s) for s in obj_shape], mode="constant", cval=0)
    return blocked == 0


def _draw_centre(rng: np.random.Generator, box: BBox | None, body: np.ndarray | None,
                 shape: Sequence[int]) -> tuple[int, int, int]:
    if box is not None:
        return tuple(int(rng.integers(s.start, s.stop)) for s in box)  # type: ignore[return-value]
    if body is not None:
        flat = np.flatnonzero(body)
        return tuple(int(v) for v in np.unravel_index(flat[rng.integers(flat.size)], body.shape))  # type: ignore[return-value]
    return tuple(int(rng.integers(n)) for n in shape)  # type: ignore[return-value]


def _draw_fitting(rng: np.random.Generator, admissible: np.ndarray) -> tuple[int, int, int] | None:
    flat = np.flatnonzero(admissible)
    if flat.size == 0:
        return None
    return tuple(int(v) for v in np.unravel_index(flat[rng.integers(flat.size)], admissible.shape))  # type: ignore[return-value]


def sample_params(rng: np.random.Generator, label: np.ndarray, object_ids: Sequence[str],
                  spacing: Sequence[float], cfg: CutMixConfig, image: np.ndarray | None = None,
                  sample_type: Iterable[int] | None = None,
                  body_threshold: float = -500.0,
                  objects: Mapping[str, ObjectInfo] | None = None,
                  centre_box: BBox | None = None) -> CutMixParams:
    """Draw the CutMix of one sample.

    ``label`` ``(Z, Y, X)`` or ``(1, Z, Y, X)``; ``object_ids`` the pool ids to draw from (e.g.
    ``pool.ids``); ``spacing`` ``(z, y, x)`` mm of the sample.  With probability
    ``cfg.probability`` it draws ``n ~ U{1..cfg.max_objects}`` objects uniformly with replacement;
    each is centred at a voxel drawn uniformly among the admissible centres (module docstring):
    inside the abdominal region — the organ box grown by ``cfg.abdomen_margin_mm``; without organ
    voxels, the body mask of ``image`` (``image > body_threshold``, in the image's units: pass the
    normalised value of -500 HU for normalised images) — and, with ``objects`` (shapes and source
    types, see :func:`object_infos`), such that the object's box lies inside the body.  An object
    without admissible centre is skipped (counted in ``unplaced``).  With ``objects`` and
    ``sample_type``, ``label_type`` of the result is ``(sample_type ∩ source types) ∪ {tumor}``.
    ``centre_box`` (with ``objects``) further restricts centres to a box of the sample: the
    trainer passes the central final-patch box of its larger pre-augmentation crop, where nnU-Net's
    spatial augmentation cuts the patch, so the pasted tumor reaches the patch.
    When ``sample_type`` already holds tumor, nothing is pasted.  The random stream is consumed in
    the same order every call.
    """
    lab = _spatial(label, "label")
    u = rng.random()
    if len(object_ids) == 0 or u >= cfg.probability:
        return CutMixParams()
    if sample_type is not None and has_tumor(sample_type):
        return CutMixParams()
    n = int(rng.integers(1, max(1, cfg.max_objects) + 1))
    picks = [str(object_ids[int(i)]) for i in rng.integers(len(object_ids), size=n)]
    box = abdomen_box(lab, spacing, cfg.abdomen_margin_mm)
    if objects is None:   # mechanics only: centre in the abdominal region, box clipped to the array
        body = None
        if box is None and image is not None:
            body = body_mask(_spatial(image, "image"), body_threshold)
            if not body.any():
                body = None
        if box is None and body is None:
            log.warning("CutMix: sample has neither organ labels nor a body mask; pasting anywhere")
        return CutMixParams(tuple(Paste(p, _draw_centre(rng, box, body, lab.shape)) for p in picks))

    body = sample_body(lab, image, body_threshold)
    beyond = lab < 0
    region = body
    if box is not None:
        region = np.zeros(lab.shape, dtype=bool)
        region[box] = True
        region &= body
    if centre_box is not None:
        inner = np.zeros(lab.shape, dtype=bool)
        inner[centre_box] = True
        region = region & inner
    fits: dict[tuple[int, ...], np.ndarray] = {}
    pastes, t_after = [], None if sample_type is None else set(label_type(sample_type))
    for p in picks:
        centre = sub = None
        for f in CONTEXT_STEPS if objects[p].tumor_box is not None else (1.0,):
            sub = trimmed_box(objects[p], f)
            shape = tuple(b - a for a, b in sub)
            if shape not in fits:
                fits[shape] = fit_centres(body, shape, beyond) & region
            if fits[shape].any():
                centre = _draw_fitting(rng, fits[shape])
                break
        if centre is None:
            continue
        full = sub == tuple((0, int(n)) for n in objects[p].shape)
        pastes.append(Paste(p, centre, None if full else sub))
        if t_after is not None:
            t_after &= set(objects[p].label_type)
    if not pastes:
        return CutMixParams(unplaced=len(picks))
    new_type = None if t_after is None else label_type(t_after | {TUMOR})
    return CutMixParams(tuple(pastes), new_type, len(picks) - len(pastes))


def paste_boxes(centre: Sequence[int], obj_shape: Sequence[int],
                vol_shape: Sequence[int]) -> tuple[BBox, BBox]:
    """Destination box in the volume and source box in the object for a paste at ``centre``.

    The object's box spans ``centre - size // 2 .. + size`` per axis, clipped to the volume; the
    source box is the matching part of the object.
    """
    dst, src = [], []
    for c, s, n in zip(centre, obj_shape, vol_shape):
        start = int(c) - int(s) // 2
        lo, hi = max(0, start), min(int(n), start + int(s))
        if hi <= lo:
            raise ValueError(f"paste centre {tuple(centre)} puts a {tuple(obj_shape)} object "
                             f"outside the volume {tuple(vol_shape)}")
        dst.append(slice(lo, hi))
        src.append(slice(lo - start, hi - start))
    return tuple(dst), tuple(src)  # type: ignore[return-value]


def outer_air(image: np.ndarray, label: np.ndarray, air_threshold: float) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` of an object: unlabelled voxels below ``air_threshold`` (image units)
    connected (6-neighbourhood) to a face of its box (:func:`flareseg.anatomy.outer_air`).  Pool
    objects carry this mask computed in HU (``CTO.outer_air``); this threshold form is for objects
    without it."""
    return anatomy_outer_air(image < air_threshold, label)


def apply(params: CutMixParams, image: np.ndarray, label: np.ndarray,
          pool: Mapping[str, _Object], keep_classes: Iterable[int] | None = None,
          air_threshold: float | None = None, keep_outer_air: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``params`` into copies of ``image`` and ``label`` (``(Z, Y, X)`` or ``(C, Z, Y, X)``).

    Inside each object box the image and label become the object's (image broadcast over
    channels, cast to the input dtypes), except the object's outer air, where the sample stays as
    it was: the object's stored ``outer_air`` mask (pool objects, found in HU), else with
    ``air_threshold`` (image units) :func:`outer_air`.  ``keep_outer_air=True`` pastes the whole
    box (the placement before issue 16.3b, for benchmarks).  The
    label asserts only ``params.label_type`` (source ∩ sample classes, plus tumor): object values
    outside it become 0 in the boxes and sample values outside it become 0 everywhere (they are
    unannotated now and merge with background).  Without ``params.label_type``, ``keep_classes``
    (the sample's type) plus tumor filters the object values only.  Later pastes overwrite earlier
    ones.
    """
    if image.shape[-3:] != label.shape[-3:]:
        raise ValueError(f"image shape {image.shape} and label shape {label.shape} disagree")
    img, lab = image.copy(), label.copy()
    if not params.pastes:
        return img, lab
    types = params.label_type if params.label_type is not None else (
        None if keep_classes is None else set(label_type(keep_classes)) | {TUMOR})
    keep = None if types is None else np.array(sorted(types))
    if params.label_type is not None:
        lab = np.where((lab > 0) & ~np.isin(lab, keep), 0, lab).astype(label.dtype, copy=False)
    for p in params.pastes:
        obj_img, obj_lab, obj_air = p.piece(pool[p.object_id])
        dst, src = paste_boxes(p.centre, obj_lab.shape, lab.shape[-3:])
        piece_img, piece = obj_img[src], obj_lab[src]
        if keep is not None:
            piece = np.where(np.isin(piece, keep), piece, 0)
        skip = None
        if not keep_outer_air:
            skip = obj_air if obj_air is not None else \
                None if air_threshold is None else outer_air(obj_img, obj_lab, air_threshold)
        if skip is None:
            img[(Ellipsis, *dst)] = piece_img
            lab[(Ellipsis, *dst)] = piece
            continue
        m = ~skip[src]
        img_box, lab_box = img[(Ellipsis, *dst)], lab[(Ellipsis, *dst)]   # views
        m = m & (_spatial(lab_box, "label") >= 0)    # nothing pasted beyond the scan (padding)
        img_box[..., m] = piece_img[m]
        lab_box[..., m] = piece[m]
    return img, lab


def label_type_after(sample_type: Iterable[int], params: CutMixParams | None = None) -> LabelType:
    """The sample's label type after CutMix: ``params.label_type`` when known, else the sample's
    type plus tumor (14); unchanged when ``params`` pasted nothing."""
    t = label_type(sample_type)
    if params is not None and not params.applied:
        return t
    if params is not None and params.label_type is not None:
        return params.label_type
    return label_type(set(t) | {TUMOR})


#: a run that pastes into fewer eligible samples than this is flagged (log WARNING, QC page in red)
MIN_PASTE_RATE = 0.10


def paste_rate_warning(counts: Mapping[str, Any] | None, min_rate: float = MIN_PASTE_RATE) -> str | None:
    """The warning for a training run's CutMix counts (``cutmix_counts.json``'s ``total``: samples,
    eligible, pasted, reached_patch, no_fit; optionally ``probability``, the run's
    ``cutmix.probability``, 1 when absent) when it pasted into fewer than ``min_rate`` of the
    samples the configuration meant to paste into (eligible samples, i.e. label type without tumor,
    times the probability); None when it pasted enough, had no eligible sample or CutMix was off
    (probability 0)."""
    if not counts or not counts.get("eligible"):
        return None
    prob = float(counts.get("probability", 1.0))
    if prob <= 0:
        return None
    pasted, eligible = int(counts.get("pasted", 0)), int(counts["eligible"])
    if pasted >= min_rate * prob * eligible:
        return None
    return (f"context-aware CutMix pasted into {pasted} of {eligible} eligible samples "
            f"({100.0 * pasted / eligible:.1f} % < {100 * min_rate:g} % of the {100 * prob:g} % "
            f"cutmix.probability implies; {int(counts.get('no_fit', 0))} drew objects that fit nowhere "
            "inside the body): the paper's tumor augmentation is mostly off "
            "(check cto.margin_z/margin_xy/margin_patch against the coarse patch)")
