"""Context-aware CutMix (the paper's Eq. 2): paste tumor objects into samples without tumor labels.

``x' = M * x_cto + (1 - M) * x`` and the same for the label, where ``M`` is the box of the CTO's
size centred at a paste centre drawn uniformly inside the sample's abdominal region.  The CTO is
cropped where its box leaves the volume.

Random choices live in :func:`sample_params` (one :class:`CutMixParams` per sample) and
:func:`apply` is deterministic, so one seed reproduces a batch.  Both take numpy arrays ``(Z, Y, X)``
or channel-first ``(C, Z, Y, X)`` (nnU-Net's data-loader layout, already at pool spacing and
normalised like the pool), never mutate their inputs, and ignore negative label values (nnU-Net's
``-1`` "outside the nonzero crop" marker) when finding the abdomen.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np

from flareseg.anatomy import BBox, bbox_of, body_mask, expand_bbox, organ_mask
from flareseg.config import CutMixConfig
from flareseg.labels import TUMOR, LabelType, has_tumor, label_type

log = logging.getLogger(__name__)


class _Object(Protocol):
    image: np.ndarray   # (Z, Y, X)
    label: np.ndarray   # (Z, Y, X)


@dataclass(frozen=True)
class Paste:
    """One pasted object: its pool id and the voxel ``(z, y, x)`` its box is centred on."""

    object_id: str
    centre: tuple[int, int, int]


@dataclass(frozen=True)
class CutMixParams:
    """What :func:`apply` pastes into one sample; no pastes means the sample is left as is."""

    pastes: tuple[Paste, ...] = ()

    @property
    def applied(self) -> bool:
        return bool(self.pastes)


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


def abdomen_box(label: np.ndarray, spacing: Sequence[float], margin_mm: float) -> BBox | None:
    """Organ bounding box grown by ``margin_mm`` — the box that :func:`flareseg.anatomy.abdomen_region`
    fills — or ``None`` without organ voxels.  ``label`` ``(Z, Y, X)``, negatives ignored."""
    lab = _clean_label(label)
    bb = bbox_of(organ_mask(lab))
    return None if bb is None else expand_bbox(bb, margin_mm, spacing, lab.shape)


def _draw_centre(rng: np.random.Generator, box: BBox | None, body: np.ndarray | None,
                 shape: Sequence[int]) -> tuple[int, int, int]:
    if box is not None:
        return tuple(int(rng.integers(s.start, s.stop)) for s in box)  # type: ignore[return-value]
    if body is not None:
        flat = np.flatnonzero(body)
        return tuple(int(v) for v in np.unravel_index(flat[rng.integers(flat.size)], body.shape))  # type: ignore[return-value]
    return tuple(int(rng.integers(n)) for n in shape)  # type: ignore[return-value]


def sample_params(rng: np.random.Generator, label: np.ndarray, object_ids: Sequence[str],
                  spacing: Sequence[float], cfg: CutMixConfig, image: np.ndarray | None = None,
                  sample_type: Iterable[int] | None = None,
                  body_threshold: float = -500.0) -> CutMixParams:
    """Draw the CutMix of one sample.

    ``label`` ``(Z, Y, X)`` or ``(1, Z, Y, X)``; ``object_ids`` the pool ids to draw from (e.g.
    ``pool.ids``); ``spacing`` ``(z, y, x)`` mm of the sample.  With probability
    ``cfg.probability`` it pastes ``n ~ U{1..cfg.max_objects}`` objects drawn uniformly with
    replacement, each centred at a voxel drawn uniformly inside the abdominal region: the organ box
    grown by ``cfg.abdomen_margin_mm``; without organ voxels, the body mask of ``image``
    (``image > body_threshold``, in the image's units: pass the normalised value of -500 HU for
    normalised images); without either, anywhere.  When ``sample_type`` is given and already holds
    tumor, nothing is pasted.  The random stream is consumed in the same order every call.
    """
    lab = _spatial(label, "label")
    u = rng.random()
    if len(object_ids) == 0 or u >= cfg.probability:
        return CutMixParams()
    if sample_type is not None and has_tumor(sample_type):
        return CutMixParams()
    n = int(rng.integers(1, max(1, cfg.max_objects) + 1))
    picks = rng.integers(len(object_ids), size=n)
    box = abdomen_box(lab, spacing, cfg.abdomen_margin_mm)
    body = None
    if box is None and image is not None:
        body = body_mask(_spatial(image, "image"), body_threshold)
        if not body.any():
            body = None
    if box is None and body is None:
        log.warning("CutMix: sample has neither organ labels nor a body mask; pasting anywhere")
    pastes = tuple(Paste(str(object_ids[int(i)]), _draw_centre(rng, box, body, lab.shape))
                   for i in picks)
    return CutMixParams(pastes)


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


def apply(params: CutMixParams, image: np.ndarray, label: np.ndarray,
          pool: Mapping[str, _Object], keep_classes: Iterable[int] | None = None,
          ) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``params`` into copies of ``image`` and ``label`` (``(Z, Y, X)`` or ``(C, Z, Y, X)``).

    Inside each object box the image and label become the object's (image broadcast over
    channels, cast to the input dtypes).  With ``keep_classes`` (the sample's label type), object
    label values outside ``keep_classes`` and tumor become 0, so the pasted organs of classes the
    sample does not annotate cannot contradict its label type.  Later pastes overwrite earlier ones.
    """
    if image.shape[-3:] != label.shape[-3:]:
        raise ValueError(f"image shape {image.shape} and label shape {label.shape} disagree")
    img, lab = image.copy(), label.copy()
    keep = None if keep_classes is None else np.array(sorted(set(label_type(keep_classes)) | {TUMOR}))
    for p in params.pastes:
        obj = pool[p.object_id]
        dst, src = paste_boxes(p.centre, obj.label.shape, lab.shape[-3:])
        img[(Ellipsis, *dst)] = obj.image[src]
        piece = obj.label[src]
        if keep is not None:
            piece = np.where(np.isin(piece, keep), piece, 0)
        lab[(Ellipsis, *dst)] = piece
    return img, lab


def label_type_after(sample_type: Iterable[int], params: CutMixParams | None = None) -> LabelType:
    """The sample's label type after CutMix: plus tumor (14), unchanged when ``params`` pasted nothing."""
    t = label_type(sample_type)
    if params is not None and not params.applied:
        return t
    return label_type(set(t) | {TUMOR})


def pasted_tumor_voxels(params: CutMixParams, label_after: np.ndarray,
                        pool: Mapping[str, _Object]) -> np.ndarray:
    """``(N, 3)`` voxel coordinates ``(z, y, x)`` of tumor inside the pasted boxes of the label
    returned by :func:`apply` (for foreground sampling, e.g. nnU-Net's ``class_locations``)."""
    lab = _spatial(label_after, "label_after")
    out = [np.zeros((0, 3), dtype=np.int64)]
    for p in params.pastes:
        dst, _ = paste_boxes(p.centre, pool[p.object_id].label.shape, lab.shape)
        out.append(np.argwhere(lab[dst] == TUMOR) + np.array([s.start for s in dst]))
    return np.unique(np.concatenate(out), axis=0)
