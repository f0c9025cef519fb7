"""Partial-label loss: merge-max channel reduction (the paper's Eq. 1) + nnU-Net Dice/CE (pure torch).

For a batch whose annotated foreground set is ``A``, the network's logits ``(B, C, Z, Y, X)``
are reduced to ``[merge(logits[rest]) ; logits[A]]``: channel 0 of the reduced problem merges
background and every unannotated class, channels ``1..|A|`` are the annotated classes in sorted
order.  The target is remapped the same way (annotated class ``A[i]`` -> ``i + 1``, everything
else -> 0), so the reduced problem is an ordinary segmentation with background at channel 0 and
nnU-Net's Dice (``do_bg=False``) + CE applies unchanged.

Variants (``TrainConfig.loss``):

- ``merge_max``: merged channel = max over the rest (Eq. 1).
- ``marginal``: merged channel = logsumexp over the rest (the marginal probability of "not A").
- ``released``: as ``merge_max``, but the tumor channel is never merged: when tumor is
  unannotated it keeps its own channel (last), which the target never contains.
- ``naive``: no reduction, all ``C`` channels; unannotated classes count as background.

Target values of unannotated classes (e.g. pseudo-label tumors marked unannotated) map to the
merged channel / background; they are never an error.  A fully annotated batch gives exactly
nnU-Net's ``DC_and_CE_loss`` with ``MemoryEfficientSoftDiceLoss``.  As in nnU-Net the loss is
``weight_ce * CE - weight_dice * Dice``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from flareseg.labels import NUM_CLASSES, TUMOR
from flareseg.losses.soft_dice import soft_dice_loss

Variant = Literal["merge_max", "released", "marginal", "naive"]
VARIANTS: tuple[str, ...] = ("merge_max", "released", "marginal", "naive")
Annotated = Union[Sequence[int], Sequence[Sequence[int]]]


@dataclass(frozen=True)
class ChannelLayout:
    """How original channels map to reduced ones.

    ``merged``: original channels merged into reduced channel 0.
    ``kept``: original channels copied to reduced channels ``1..len(kept)``, in order.
    ``lut``: original class -> reduced target class (annotated -> its reduced channel, else 0).
    """

    merged: tuple[int, ...]
    kept: tuple[int, ...]
    lut: tuple[int, ...]

    def is_identity(self) -> bool:
        return self.merged == (0,) and self.kept == tuple(range(1, len(self.lut)))


def _normalise(annotated: Sequence[int], num_classes: int) -> tuple[int, ...]:
    out = set()
    for c in annotated:
        ci = int(c)
        if not 1 <= ci < num_classes:
            raise ValueError(f"annotated class {c!r} is not a foreground class (valid: 1..{num_classes - 1})")
        out.add(ci)
    if not out:
        raise ValueError("annotated set is empty: a batch without annotated classes has nothing to learn")
    return tuple(sorted(out))


@functools.lru_cache(maxsize=1024)
def _layout(annotated: tuple[int, ...], variant: str, num_classes: int, tumor: int) -> ChannelLayout:
    if variant not in VARIANTS:
        raise ValueError(f"unknown loss variant {variant!r} (valid: {', '.join(VARIANTS)})")
    if variant == "naive":
        kept = tuple(range(1, num_classes))
    elif variant == "released":
        if not 1 <= tumor < num_classes:
            raise ValueError(f"tumor class {tumor} outside 1..{num_classes - 1} for the 'released' variant")
        kept = tuple(sorted(set(annotated) | {tumor}))
    else:
        kept = annotated
    merged = tuple(c for c in range(num_classes) if c not in kept)
    lut = tuple(kept.index(c) + 1 if c in annotated else 0 for c in range(num_classes))
    return ChannelLayout(merged, kept, lut)


def channel_layout(
    annotated: Sequence[int], variant: Variant = "merge_max", num_classes: int = NUM_CLASSES, tumor: int = TUMOR
) -> ChannelLayout:
    """Reduced-channel layout for annotated foreground classes ``annotated`` (background excluded)."""
    return _layout(_normalise(annotated, num_classes), variant, num_classes, tumor)


@functools.lru_cache(maxsize=4096)
def _index(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def reduce_logits(
    logits: torch.Tensor, annotated: Sequence[int], variant: Variant = "merge_max", tumor: int = TUMOR
) -> torch.Tensor:
    """``(B, C, *spatial)`` logits -> ``(B, 1 + len(kept), *spatial)`` reduced logits (merged channel first)."""
    layout = channel_layout(annotated, variant, logits.shape[1], tumor)
    if layout.is_identity():
        return logits
    merged = logits.index_select(1, _index(layout.merged, logits.device))
    if variant == "marginal":
        merged = torch.logsumexp(merged, 1, keepdim=True)
    else:
        merged = merged.amax(1, keepdim=True)
    kept = logits.index_select(1, _index(layout.kept, logits.device))
    return torch.cat([merged.to(kept.dtype), kept], 1)


def check_target(target: torch.Tensor, num_classes: int = NUM_CLASSES) -> None:
    """Raise ``ValueError`` unless every target value is an integer class in ``0..num_classes-1``."""
    if target.numel() == 0:
        raise ValueError("target is empty")
    lo, hi = torch.aminmax(target)
    lo, hi = float(lo), float(hi)
    if lo < 0 or hi > num_classes - 1:
        raise ValueError(f"target values span {lo:g}..{hi:g}, expected classes 0..{num_classes - 1}")
    if target.is_floating_point() and not torch.equal(target, target.round()):
        raise ValueError("target holds non-integer values")


def reduce_target(
    target: torch.Tensor,
    annotated: Sequence[int],
    variant: Variant = "merge_max",
    num_classes: int = NUM_CLASSES,
    tumor: int = TUMOR,
    check: bool = True,
) -> torch.Tensor:
    """Integer target ``(B, 1, *spatial)`` or ``(B, *spatial)`` -> reduced target, same shape, ``torch.long``."""
    if check:
        check_target(target, num_classes)
    layout = channel_layout(annotated, variant, num_classes, tumor)
    if layout.lut == tuple(range(num_classes)):
        return target.long()
    return _index(layout.lut, target.device)[target.long()]


def deep_supervision_weights(n: int, last_weight: float = 0.0) -> tuple[float, ...]:
    """nnU-Net's scale weights: ``1 / 2**i``, lowest resolution set to ``last_weight``, normalised to sum 1.

    (nnU-Net uses ``last_weight=1e-6`` under DDP without ``torch.compile`` to avoid unused-parameter errors.)
    """
    if n < 1:
        raise ValueError("need at least one output")
    if n == 1:
        return (1.0,)
    w = [0.5**i for i in range(n)]
    w[-1] = last_weight
    s = sum(w)
    return tuple(x / s for x in w)


def _is_per_sample(annotated: Annotated) -> bool:
    return len(annotated) > 0 and isinstance(annotated[0], (list, tuple, set, frozenset))


class PartialLabelLoss(nn.Module):
    """Dice + CE on reduced channels, per call annotated set, optional deep supervision.

    ``forward(output, target, annotated)``:
    ``output``: logits ``(B, C, Z, Y, X)`` or a list of them (deep supervision, highest resolution first);
    ``target``: integer map ``(B, 1, Z, Y, X)`` / ``(B, Z, Y, X)`` or a matching list;
    ``annotated``: the batch's annotated foreground classes (e.g. ``(1, 14)``), or one such set per
    sample (mixed batches are split by set; CE and per-sample Dice average over the samples, batch
    Dice pools each class over the samples that keep it).
    ``ds_weights``: per-scale weights; ``None`` = :func:`deep_supervision_weights` of the list length.
    Scales with weight 0 are skipped.  ``ddp``: batch Dice statistics summed over ranks.
    ``check``: validate the full-resolution target's value range each call (one device sync).

    Batch Dice with per-sample sets or under DDP (:meth:`pooled`): every sample is reduced with
    its own set; its Dice statistics land in a fixed layout indexed by the *original* class
    ``1..C-1`` (a class the sample does not keep contributes nothing), so every rank all-reduces
    one ``(4, C-1)`` tensor per scale whatever sets its samples have, and class ``c`` pools exactly
    the samples (of all ranks) that keep it.  The Dice term is the mean over the classes some
    sample keeps; with one set for the whole batch this is the ordinary batch Dice.
    """

    def __init__(
        self,
        variant: Variant = "merge_max",
        batch_dice: bool = False,
        smooth: float = 1e-5,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
        ds_weights: Sequence[float] | None = None,
        ddp: bool = False,
        tumor: int = TUMOR,
        check: bool = True,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown loss variant {variant!r} (valid: {', '.join(VARIANTS)})")
        self.variant = variant
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice
        self.ds_weights = None if ds_weights is None else tuple(float(w) for w in ds_weights)
        self.ddp = ddp
        self.tumor = tumor
        self.check = check

    def single(self, logits: torch.Tensor, target: torch.Tensor, annotated: Sequence[int]) -> torch.Tensor:
        """Loss at one scale for one annotated set."""
        num_classes = logits.shape[1]
        red = reduce_logits(logits, annotated, self.variant, self.tumor)
        tgt = reduce_target(target, annotated, self.variant, num_classes, self.tumor, check=False)
        if tgt.ndim == red.ndim:
            tgt = tgt[:, 0]
        loss = red.new_zeros((), dtype=torch.float32)
        if self.weight_ce:
            loss = loss + self.weight_ce * F.cross_entropy(red, tgt)
        if self.weight_dice:
            dc = soft_dice_loss(torch.softmax(red, 1), tgt, self.batch_dice, False, self.smooth, self.ddp)
            loss = loss + self.weight_dice * dc
        return loss

    def _groups(self, logits: torch.Tensor, annotated: Annotated) -> dict[tuple[int, ...], list[int]]:
        """Normalised annotated set -> indices of the samples that have it (first-seen order)."""
        b = logits.shape[0]
        if not _is_per_sample(annotated):
            return {_normalise(annotated, logits.shape[1]): list(range(b))}
        if len(annotated) != b:
            raise ValueError(f"{len(annotated)} annotated sets for a batch of {b}")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(annotated):
            groups.setdefault(_normalise(a, logits.shape[1]), []).append(i)
        return groups

    def pooled(self, logits: torch.Tensor, target: torch.Tensor, annotated: Annotated) -> torch.Tensor:
        """Loss at one scale with batch Dice pooled per original class (see the class docstring)."""
        return self._pooled(logits, target, self._groups(logits, annotated))

    def _pooled(self, logits: torch.Tensor, target: torch.Tensor,
                groups: dict[tuple[int, ...], list[int]]) -> torch.Tensor:
        """:meth:`pooled` for samples grouped by annotated set.

        CE: each sample's reduced cross-entropy, averaged over the batch's voxels.  Dice: the
        statistics ``(intersect, sum_pred, sum_gt, samples)`` of every class ``1..C-1`` summed over
        the batch (and over the ranks with ``ddp``: one all-reduce of a ``(4, C-1)`` tensor)."""
        from flareseg.losses.soft_dice import all_reduce_sum, dice_statistics
        b, c = logits.shape[:2]
        dtype = torch.promote_types(logits.dtype, torch.float32)
        ce = logits.new_zeros((), dtype=dtype)
        stats = logits.new_zeros((4, c - 1), dtype=dtype)
        for a, idx in groups.items():
            lg, tg = logits, target
            if len(idx) < b:
                sel = _index(tuple(idx), logits.device)
                lg, tg = logits.index_select(0, sel), target.index_select(0, sel)
            red = reduce_logits(lg, a, self.variant, self.tumor)
            tgt = reduce_target(tg, a, self.variant, c, self.tumor, check=False)
            if tgt.ndim == red.ndim:
                tgt = tgt[:, 0]
            if self.weight_ce:
                ce = ce + len(idx) / b * F.cross_entropy(red, tgt)
            if self.weight_dice:
                inter, pred, gt = dice_statistics(torch.softmax(red, 1), tgt, dtype)
                n = torch.full_like(gt[0], float(len(idx)))
                grp = torch.stack([inter.sum(0), pred.sum(0), gt.sum(0), n])
                kept = channel_layout(a, self.variant, c, self.tumor).kept
                stats = stats.index_add(1, _index(tuple(k - 1 for k in kept), logits.device), grp)
        loss = self.weight_ce * ce
        if self.weight_dice:
            if self.ddp:
                stats = all_reduce_sum(stats)
            inter, pred, gt, n = stats
            dc = (2 * inter + self.smooth) / (gt + pred + self.smooth).clamp_min(1e-8)
            present = (n > 0).to(dc.dtype)
            loss = loss - self.weight_dice * (dc * present).sum() / present.sum().clamp_min(1)
        return loss

    def _scale(self, logits: torch.Tensor, target: torch.Tensor, annotated: Annotated) -> torch.Tensor:
        groups = self._groups(logits, annotated)
        if self.batch_dice and (self.ddp or len(groups) > 1):
            return self._pooled(logits, target, groups)
        b = logits.shape[0]
        if len(groups) == 1:
            return self.single(logits, target, next(iter(groups)))
        total = logits.new_zeros((), dtype=torch.float32)
        for a, idx in groups.items():
            sel = _index(tuple(idx), logits.device)
            total = total + len(idx) / b * self.single(logits.index_select(0, sel), target.index_select(0, sel), a)
        return total

    def forward(self, output, target, annotated: Annotated) -> torch.Tensor:
        if isinstance(output, (list, tuple)) != isinstance(target, (list, tuple)):
            raise ValueError("output and target must both be tensors or both be lists (deep supervision)")
        if not isinstance(output, (list, tuple)):
            output, target = [output], [target]
        if len(output) != len(target):
            raise ValueError(f"{len(output)} outputs but {len(target)} targets")
        weights = self.ds_weights if self.ds_weights is not None else deep_supervision_weights(len(output))
        if len(weights) != len(output):
            raise ValueError(f"{len(weights)} deep-supervision weights for {len(output)} outputs")
        if self.check:
            check_target(target[0], output[0].shape[1])
        terms = [w * self._scale(o, t, annotated) for w, o, t in zip(weights, output, target) if w != 0]
        return torch.stack(terms).sum()
