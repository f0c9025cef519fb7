"""Per-case organ and tumor uncertainty from one or more predictions ("members").

A member is either softmax probabilities ``(C, Z, Y, X)`` (C = 15 FLARE23 classes) or a hard label
map ``(Z, Y, X)`` (e.g. an external team's pseudo labels, treated as one-hot probabilities).
Members may be numpy arrays or torch tensors on any device; all work happens on the device of the
first member, so a GPU predictor's probabilities never leave the GPU.

Members are streamed into :class:`MemberAccumulator` one at a time, so only running sums (and one
``uint8`` argmax map per member) are kept, never all members' probabilities at once::

    acc = MemberAccumulator()
    for predict in members:            # checkpoints, folds, TTA, external label folders
        acc.add(predict(image))        # (15, Z, Y, X) probabilities on the GPU, or a label map
    scores = acc.scores()              # flat dict of floats (see below)
    pseudo_label = acc.label()         # (Z, Y, X) uint8 argmax of the mean prediction

Scores, each computed for the ``organ`` group (classes 1..13) and the ``tumor`` group (14)
separately; ``<group>_<score>`` keys:

- ``voxels``: voxels whose mean-prediction argmax is in the group.
- ``entropy``: mean voxel entropy (nats; max ln 15 = 2.71) of the mean prediction over voxels whose
  mean-prediction argmax is in the group.  With one member this is that member's entropy over its
  predicted foreground.  Higher = more uncertain.
- with >= 2 members only:
  - ``disagreement`` (the authors' formula): voxels where the members' argmax labels are not all
    equal, divided by voxels where any member predicts the group.  Higher = more uncertain.
  - ``inconsistency`` (AbdomenAtlas): population std (ddof=0) across members of the soft prediction
    of each group class, averaged over the voxels where any member predicts that class (pooled over
    the group's classes, i.e. voxel-weighted).  Higher = more uncertain.
  - ``overlap`` (AbdomenAtlas): Dice between members' group label maps (pooled over the group's
    classes: 2 * voxels where both predict the same group class / sum of both group volumes), mean
    over member pairs.  Higher = more *confident* (an agreement, not an uncertainty).

A group that no member predicts anywhere gets ``NaN`` for every score but ``voxels`` (0): there is
nothing whose uncertainty could be measured.  :mod:`flareseg.pseudolabel.selection` ranks ``NaN``
last and never selects it — a case without predicted organs is no organ pseudo label, and a case
without a predicted tumor has no tumor label to keep.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence, Union

import numpy as np
import torch

from flareseg.labels import NUM_CLASSES, ORGANS, TUMOR

Member = Union[np.ndarray, torch.Tensor]

#: group name -> class indices; scores are reported per group.
GROUPS: dict[str, tuple[int, ...]] = {"organ": ORGANS, "tumor": (TUMOR,)}
#: every score an accumulator can report (``voxels`` is a count, not a score).
SCORES: tuple[str, ...] = ("entropy", "disagreement", "inconsistency", "overlap")
#: scores needing at least two members.
MULTI_MEMBER_SCORES: tuple[str, ...] = ("disagreement", "inconsistency", "overlap")
#: +1 where a higher value means more uncertain, -1 where it means more confident.
UNCERTAINTY_SIGN: dict[str, int] = {"entropy": 1, "disagreement": 1, "inconsistency": 1, "overlap": -1}


def score_key(group: str, score: str) -> str:
    """Column name of ``score`` for ``group``, e.g. ``organ_entropy``."""
    return f"{group}_{score}"


def as_tensor(x: Member, device: torch.device | str | None = None) -> torch.Tensor:
    """numpy array or tensor -> tensor on ``device`` (zero-copy where possible)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"member must be a numpy array or torch tensor, got {type(x).__name__}")
    return t.to(device) if device is not None else t


def voxel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) per voxel of probabilities ``(C, Z, Y, X)`` -> ``(Z, Y, X)``; 0 log 0 = 0."""
    p = probs.float()
    return -torch.special.xlogy(p, p).sum(0)


def _lut(classes: Iterable[int], num_classes: int, device: torch.device) -> torch.Tensor:
    lut = torch.zeros(num_classes, dtype=torch.bool, device=device)
    lut[list(classes)] = True
    return lut


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    d = float(den)
    return float(num) / d if d > 0 else math.nan


class MemberAccumulator:
    """Stream members of one case and compute its organ/tumor uncertainty scores.

    ``num_classes`` and ``groups`` default to FLARE23 (15 classes; organs 1..13, tumor 14).
    """

    def __init__(self, groups: Mapping[str, Sequence[int]] = GROUPS, num_classes: int = NUM_CLASSES,
                 check_probabilities: bool = True):
        self.groups = {g: tuple(int(c) for c in cs) for g, cs in groups.items()}
        self.num_classes = num_classes
        self.check_probabilities = check_probabilities
        self.device: torch.device | None = None
        self.shape: tuple[int, ...] | None = None
        self._sum: torch.Tensor | None = None      # (C, N) float32 sum of member probabilities
        self._sumsq: torch.Tensor | None = None    # (C, N) float32 sum of squares (from member 2 on)
        self._labels: list[torch.Tensor] = []      # per member (N,) uint8 argmax

    @property
    def n_members(self) -> int:
        return len(self._labels)

    # ------------------------------------------------------------------ intake
    def add(self, member: Member) -> None:
        """Add probabilities ``(C, Z, Y, X)`` or a label map ``(Z, Y, X)`` of the same grid."""
        t = as_tensor(member, self.device)
        if self.device is None:
            self.device = t.device
        probs, label = self._validate(t)
        if self._sum is None:
            self._sum = probs            # not modified in place while it may alias the caller's data
        else:
            if self._sumsq is None:      # second member: start the sum of squares
                self._sumsq = self._sum.square()
                self._sum = self._sum.clone()
            self._sum += probs
            self._sumsq += probs.square() if label is None else probs   # one-hot squared = one-hot
        self._labels.append(label if label is not None else probs.argmax(0).to(torch.uint8))

    def _validate(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (probabilities (C, N) float32, label (N,) uint8 or None if the member was soft)."""
        C = self.num_classes
        n = self.n_members
        if t.ndim == 4:
            if t.shape[0] != C:
                raise ValueError(f"member {n}: probabilities need {C} channels, got shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"member {n}: 4-D member must hold float probabilities, got {t.dtype}")
            spatial = tuple(t.shape[1:])
            self._check_shape(spatial, n)
            if self.check_probabilities:
                s = t[:, ::7, ::7, ::7].float().sum(0)
                if s.numel() and not torch.allclose(s, torch.ones_like(s), atol=1e-2):
                    raise ValueError(f"member {n}: channels do not sum to 1 (logits instead of softmax?)")
            return t.reshape(C, -1).float(), None
        if t.ndim == 3:
            self._check_shape(tuple(t.shape), n)
            if t.is_floating_point():
                if not torch.equal(t, t.round()):
                    raise ValueError(f"member {n}: 3-D member must be an integer label map")
            lab = t.reshape(-1).long()
            if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= C):
                raise ValueError(f"member {n}: label values must lie in 0..{C - 1}, "
                                 f"got {int(lab.min())}..{int(lab.max())}")
            onehot = torch.zeros(C, lab.numel(), dtype=torch.float32, device=t.device)
            onehot.scatter_(0, lab[None], 1.0)
            return onehot, lab.to(torch.uint8)
        raise ValueError(f"member {n}: expected (C, Z, Y, X) probabilities or a (Z, Y, X) label map, "
                         f"got shape {tuple(t.shape)}")

    def _check_shape(self, spatial: tuple[int, ...], n: int) -> None:
        if self.shape is None:
            self.shape = spatial
        elif spatial != self.shape:
            raise ValueError(f"member {n}: grid {spatial} differs from the first member's {self.shape}")

    # ------------------------------------------------------------------ results
    def _mean(self) -> torch.Tensor:
        if self._sum is None:
            raise ValueError("no members added")
        return self._sum if self.n_members == 1 else self._sum / self.n_members

    def label(self) -> torch.Tensor:
        """Pseudo label: argmax of the mean prediction, ``(Z, Y, X)`` uint8 on the members' device."""
        lab = self._labels[0] if self.n_members == 1 else self._mean().argmax(0).to(torch.uint8)
        assert self.shape is not None
        return lab.reshape(self.shape)

    def scores(self) -> dict[str, float]:
        """Flat dict: ``n_members`` and ``<group>_<score>`` for every group (see module doc)."""
        mean = self._mean()
        lab = self.label().reshape(-1).long()
        ent = voxel_entropy(mean)
        out: dict[str, float] = {"n_members": float(self.n_members)}
        multi = self.n_members >= 2
        if multi:
            labels = torch.stack(self._labels).long()                      # (M, N)
            disagree = (labels != labels[0]).any(0)                        # (N,)
            std = (self._sumsq / self.n_members - mean.square()).clamp_min_(0).sqrt_()
            union = torch.zeros(self.num_classes, labels.shape[1], dtype=torch.bool, device=self.device)
            for lm in labels:                                              # any member predicts c
                union.scatter_(0, lm[None], True)
        for g, classes in self.groups.items():
            lut = _lut(classes, self.num_classes, self.device)
            fg = lut[lab]
            out[score_key(g, "voxels")] = float(fg.sum())
            out[score_key(g, "entropy")] = _ratio(ent[fg].sum(dtype=torch.float64), fg.sum())
            if not multi:
                continue
            in_group = lut[labels]                                         # (M, N)
            any_fg = in_group.any(0)
            out[score_key(g, "disagreement")] = _ratio((disagree & any_fg).sum(), any_fg.sum())
            cls = list(classes)
            out[score_key(g, "inconsistency")] = _ratio(
                (std[cls] * union[cls]).sum(dtype=torch.float64), union[cls].sum())
            out[score_key(g, "overlap")] = _mean_pairwise_dice(labels, in_group)
        return out


def _mean_pairwise_dice(labels: torch.Tensor, in_group: torch.Tensor) -> float:
    """Mean over member pairs of the class-pooled Dice restricted to the group; NaN if all pairs empty."""
    dices = []
    M = labels.shape[0]
    for a in range(M):
        for b in range(a + 1, M):
            den = float(in_group[a].sum() + in_group[b].sum())
            if den > 0:
                agree = ((labels[a] == labels[b]) & in_group[a]).sum()
                dices.append(2.0 * float(agree) / den)
    return float(np.mean(dices)) if dices else math.nan


def case_scores(members: Member | Sequence[Member], groups: Mapping[str, Sequence[int]] = GROUPS,
                num_classes: int = NUM_CLASSES) -> dict[str, float]:
    """Scores of one case from one member (array/tensor) or a sequence of members (see module doc)."""
    if isinstance(members, (np.ndarray, torch.Tensor)):
        members = [members]
    acc = MemberAccumulator(groups, num_classes)
    for m in members:
        acc.add(m)
    return acc.scores()
