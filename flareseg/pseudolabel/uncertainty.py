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
    over the member pairs where at least one predicts the group.  Higher = more *confident* (an
    agreement, not an uncertainty).

- ``members``: how many members the group's scores use (see below).

**Members that count for some groups only.**  ``add(label_map, groups=("organ",))`` adds a member
that scores the organ group only: an external algorithm's organ-only pseudo labels (the paper's
FLARE22 winner and best-accuracy algorithm) know no tumor class, so their "liver" where the fine
model sees a tumor is no evidence against the tumor.  Each group's scores then use only the members
that count for it (``tumor`` above: the members that predict tumor), and a group's scores leave out
the voxels where any of its members predicts a class of a group that not all of them score (the
organ score skips the voxels a tumor-predicting member calls tumor: an organ-only member says
nothing there).  Only label maps can be limited this way (their one-hot sums are taken back out
exactly); probabilities always count for every group.  Without limited members every score is
exactly as above.

A group that none of its members predicts anywhere gets ``NaN`` for every score but ``voxels`` (0):
there is nothing whose uncertainty could be measured; so does a multi-member score of a group
that fewer than two members score.  :mod:`flareseg.pseudolabel.selection` never carries a ``NaN``:
such a case gets no score for that group, is ranked last and never selected (a case without
predicted organs is no organ pseudo label, a case without a predicted tumor has no tumor label to
keep), and the selection table says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
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


def voxel_entropy(probs: torch.Tensor, total: float = 1.0) -> torch.Tensor:
    """Entropy (nats) per voxel of probabilities ``(C, Z, Y, X)`` -> ``(Z, Y, X)``; 0 log 0 = 0.

    With ``total = M`` the input may be a *sum* of M members' probabilities and the result is the
    entropy of their mean, ``ln M - (1/M) sum s ln s``, without materialising the mean.
    """
    s = probs.float()
    # clamp keeps 0 * log(0) at 0; in-place log/mul on the one temporary (faster than xlogy on CPU)
    slogs = s.clamp_min(torch.finfo(torch.float32).tiny).log_().mul_(s).sum(0)
    return slogs.neg_() if total == 1.0 else slogs.div_(-total).add_(math.log(total)).clamp_min_(0)


def _lut(classes: Iterable[int], num_classes: int, device: torch.device) -> torch.Tensor:
    lut = torch.zeros(num_classes, dtype=torch.bool, device=device)
    lut[list(classes)] = True
    return lut


def _ratio(num: torch.Tensor | float, den: torch.Tensor | float) -> float:
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
        self._groups: list[frozenset[str]] = []    # per member: the groups it counts for

    @property
    def n_members(self) -> int:
        return len(self._labels)

    # ------------------------------------------------------------------ intake
    def add(self, member: Member, groups: Iterable[str] | None = None) -> None:
        """Add probabilities ``(C, Z, Y, X)`` or a label map ``(Z, Y, X)`` of the same grid.

        ``groups``: the groups whose scores this member counts for (default: all); only a label
        map may be limited (e.g. ``("organ",)`` for an external organ-only algorithm)."""
        gs = frozenset(self.groups) if groups is None else frozenset(groups)
        unknown = sorted(gs - set(self.groups))
        if unknown or not gs:
            raise ValueError(f"member {self.n_members}: groups must be a non-empty subset of "
                             f"{sorted(self.groups)}, got {sorted(gs)}")
        t = as_tensor(member, self.device)
        if gs != frozenset(self.groups) and t.ndim != 3:
            raise ValueError(f"member {self.n_members}: only a label map can count for some groups "
                             f"only ({sorted(gs)}); probabilities count for every group")
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
            if label is None:
                self._sumsq.addcmul_(probs, probs)
            else:
                self._sumsq += probs                                       # one-hot squared = one-hot
        self._labels.append(label if label is not None else _argmax0(probs).to(torch.uint8))
        self._groups.append(gs)

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
    def label(self) -> torch.Tensor:
        """Pseudo label: argmax of the mean prediction, ``(Z, Y, X)`` uint8 on the members' device.

        With members limited to some groups, the mean is over the members that count for every
        group (an organ-only member would vote a tumor away); over all members if none does."""
        if self._sum is None or self.shape is None:
            raise ValueError("no members added")
        full = self._full_members()
        if len(full) in (0, self.n_members):
            lab = self._labels[0] if self.n_members == 1 else _argmax0(self._sum).to(torch.uint8)
        elif len(full) == 1:
            lab = self._labels[full[0]]
        else:
            lab = _argmax0(self._without(self._sum, full)).to(torch.uint8)
        return lab.reshape(self.shape)

    def _full_members(self) -> list[int]:
        """Indices of the members that count for every group."""
        every = frozenset(self.groups)
        return [i for i, g in enumerate(self._groups) if g == every]

    def _without(self, total: torch.Tensor, keep: Sequence[int], cols: torch.Tensor | None = None) -> torch.Tensor:
        """``total`` (a sum over all members, optionally restricted to voxel columns ``cols``) less
        the one-hots of the members not in ``keep`` (label maps by construction); a new tensor."""
        out = (total if cols is None else total[:, cols]).clone()
        for i in range(self.n_members):
            if i not in keep:
                lab = self._labels[i] if cols is None else self._labels[i][cols]
                out.scatter_add_(0, lab.long()[None], torch.full_like(out[:1], -1.0))
        return out.clamp_min_(0)

    def scores(self) -> dict[str, float]:
        """Flat dict: ``n_members`` and ``<group>_<score>`` for every group (see module doc).

        Everything reduces to per-class sums (``bincount``) over the full grid plus dense work only
        on the voxels where members disagree, so the cost stays close to one pass over the members.
        With members limited to some groups the scores come from :meth:`_limited_scores` (its own
        per-group sums, :class:`LimitedPartialScores`).
        """
        if self._sum is None:
            raise ValueError("no members added")
        if self.limited:
            return self._limited_scores()
        return self.partial().scores(self.groups, self.num_classes)

    @property
    def limited(self) -> bool:
        """Whether some member counts for some groups only (scores from per-group member subsets)."""
        return len(self._full_members()) < self.n_members

    def partial(self) -> "PartialScores | LimitedPartialScores":
        """The sums the scores are ratios of, on the CPU: partial results of disjoint parts of a
        grid (z-slabs, :func:`score_members_in_slabs`) add up with ``+``; ``.scores(groups,
        num_classes)`` of the total are the scores of the whole grid.  With members limited to some
        groups (:attr:`limited`) these are :class:`LimitedPartialScores`."""
        C = self.num_classes
        if self._sum is None:
            raise ValueError("no members added")
        if self.limited:
            return self._limited_partial()
        lab = self.label().reshape(-1).long()
        n_c = torch.bincount(lab, minlength=C).double()
        h_c = torch.bincount(lab, weights=voxel_entropy(self._sum, self.n_members).double(), minlength=C)
        multi = self._multi_member_stats().cpu() if self.n_members >= 2 else None
        return PartialScores(self.n_members, n_c.cpu(), h_c.cpu(), multi)

    def _limited_scores(self) -> dict[str, float]:
        """Scores when some members count for some groups only (see module doc)."""
        return self._limited_partial().scores(self.groups, self.num_classes)

    def _limited_partial(self) -> "LimitedPartialScores":
        """The sums the group-limited scores are ratios of: per group, its members, on the voxels
        a group class could win or any of them predicts (the rest add 0).  Every entry is a sum
        over voxels, so the sums of disjoint parts of a grid (z-slabs) add up with ``+``."""
        C = self.num_classes
        sums: dict[str, dict] = {}
        for g, classes in self.groups.items():
            members = [i for i, gs in enumerate(self._groups) if g in gs]
            M = len(members)
            rec: dict = {"members": M, "voxels": 0.0, "entropy": 0.0, "dis": 0.0, "any": 0.0,
                         "incons_num": 0.0, "incons_den": 0.0, "pairs": np.zeros((M * (M - 1) // 2, 2))}
            sums[g] = rec
            if M == 0:                  # no member counts for this group: nothing to measure
                continue
            lut = _lut(classes, C, self.device)
            # classes of the groups not every one of these members scores: their voxels are left out
            partial = {c for h, cs in self.groups.items() if any(h not in self._groups[i] for i in members)
                       for c in cs} - set(classes)
            labs = torch.stack([self._labels[i] for i in members]).long()          # (M, N)
            cand = lut[labs].any(0)
            best = self._sum[classes[0]].clone()
            for c in classes[1:]:
                torch.maximum(best, self._sum[c], out=best)
            cand |= best >= M / C - 1e-6       # the mean's argmax needs at least 1/C of the mass
            del best
            if partial:
                cand &= ~_lut(partial, C, self.device)[labs].any(0)
            cols = cand.nonzero().squeeze(1)
            labs = labs[:, cols]
            s1 = self._without(self._sum, members, cols)                           # (C, K) member sum
            win = _argmax0(s1) if M > 1 else labs[0]
            in_g = lut[win]
            rec["voxels"] = float(in_g.sum())
            rec["entropy"] = float(voxel_entropy(s1[:, in_g], M).double().sum()) if rec["voxels"] else 0.0
            if self.n_members < 2 or M < 2:
                continue
            any_g = lut[labs].any(0)
            dis = (labs != labs[0]).any(0)
            rec["dis"], rec["any"] = float((dis & any_g).sum()), float(any_g.sum())
            m1 = s1 / M
            std = (self._without(self._sumsq, members, cols) / M - m1.square()).clamp_min_(0).sqrt_()
            union = torch.zeros_like(std, dtype=torch.bool)
            for lm in labs:
                union.scatter_(0, lm[None], True)
            idx = torch.tensor(classes, device=self.device)
            rec["incons_num"] = float((std * union)[idx].sum(dtype=torch.float64))
            rec["incons_den"] = float(union[idx].sum())
            k = 0
            for a in range(M):
                for b in range(a + 1, M):
                    rec["pairs"][k] = (float(((labs[a] == labs[b]) & lut[labs[a]]).sum()),
                                       float(lut[labs[a]].sum() + lut[labs[b]].sum()))
                    k += 1
        return LimitedPartialScores(self.n_members, sums)

    def _multi_member_stats(self) -> "_MultiStats":
        C, M = self.num_classes, self.n_members
        labels = torch.stack(self._labels).long()                          # (M, N)
        dis = (labels != labels[0]).any(0)                                 # members disagree
        key = labels[0] + C * dis.long()                                   # bins < C: agreeing voxels
        agree_n = torch.bincount(key, minlength=2 * C)[:C].double()
        # where all agree on class l, only l's union holds the voxel: std of channel l there
        s1 = self._sum.gather(0, labels[0][None])[0] / M
        s2 = self._sumsq.gather(0, labels[0][None])[0] / M
        std_l = (s2 - s1.square()).clamp_min_(0).sqrt_()
        incons_num = torch.bincount(key, weights=std_l.double(), minlength=2 * C)[:C]
        incons_den = agree_n.clone()
        sub = labels[:, dis]                                               # (M, n_dis)
        if sub.numel():
            m1 = self._sum[:, dis] / M
            std = (self._sumsq[:, dis] / M - m1.square()).clamp_min_(0).sqrt_()
            union = torch.zeros_like(std, dtype=torch.bool)
            for lm in sub:
                union.scatter_(0, lm[None], True)
            incons_num += (std * union).sum(1, dtype=torch.float64)
            incons_den += union.sum(1).double()
        vols = [torch.bincount(lm, minlength=C).double() for lm in labels]
        pairs = [(a, b, torch.bincount(labels[a] + C * (labels[a] != labels[b]).long(),
                                       minlength=2 * C)[:C].double())
                 for a in range(M) for b in range(a + 1, M)]
        # per group: disagreeing voxels where any member predicts the group (a count, so parts add)
        dis_in = {g: (_lut(cs, C, self.device)[sub].any(0).sum() if sub.numel() else torch.tensor(0)).double()
                  for g, cs in self.groups.items()}
        return _MultiStats(agree_n, dis_in, incons_num, incons_den, vols, pairs)


@dataclass
class PartialScores:
    """Per-class sums of one part of a case's grid (:meth:`MemberAccumulator.partial`)."""
    n_members: int
    n_c: torch.Tensor                # (C,) voxels whose mean-prediction argmax is class c
    h_c: torch.Tensor                # (C,) their summed entropy
    multi: "_MultiStats | None"      # >= 2 members

    def __add__(self, other: "PartialScores") -> "PartialScores":
        if other.n_members != self.n_members:
            raise ValueError(f"partial scores of {self.n_members} and {other.n_members} members")
        multi = None if self.multi is None else self.multi + other.multi  # type: ignore[operator]
        return PartialScores(self.n_members, self.n_c + other.n_c, self.h_c + other.h_c, multi)

    def scores(self, groups: Mapping[str, Sequence[int]], num_classes: int) -> dict[str, float]:
        out: dict[str, float] = {"n_members": float(self.n_members)}
        for g, classes in groups.items():
            idx = torch.tensor(classes)
            out[score_key(g, "voxels")] = float(self.n_c[idx].sum())
            out[score_key(g, "members")] = float(self.n_members)
            out[score_key(g, "entropy")] = _ratio(self.h_c[idx].sum(), self.n_c[idx].sum())
            if self.multi is not None:
                out.update(self.multi.group_scores(g, idx))
        return out


@dataclass
class LimitedPartialScores:
    """Per-group sums of one part of a case's grid when some members count for some groups only
    (:meth:`MemberAccumulator.partial`); disjoint parts add up with ``+``."""
    n_members: int
    sums: dict[str, dict]            # group -> members, voxels, entropy, dis, any, incons_*, pairs

    def __add__(self, other: "LimitedPartialScores") -> "LimitedPartialScores":
        if not isinstance(other, LimitedPartialScores) or other.n_members != self.n_members \
                or any(other.sums[g]["members"] != r["members"] for g, r in self.sums.items()):
            raise ValueError("partial scores of different member sets")
        return LimitedPartialScores(self.n_members, {
            g: {k: (v if k == "members" else v + other.sums[g][k]) for k, v in r.items()}
            for g, r in self.sums.items()})

    def scores(self, groups: Mapping[str, Sequence[int]], num_classes: int) -> dict[str, float]:
        out: dict[str, float] = {"n_members": float(self.n_members)}
        for g in groups:
            r = self.sums[g]
            M, n_g = r["members"], r["voxels"]
            out[score_key(g, "voxels")] = float(n_g)
            out[score_key(g, "members")] = float(M)
            out[score_key(g, "entropy")] = r["entropy"] / n_g if M and n_g else math.nan
            if self.n_members < 2:
                continue
            res = dict.fromkeys((score_key(g, s) for s in MULTI_MEMBER_SCORES), math.nan)
            if M >= 2:
                res[score_key(g, "disagreement")] = _ratio(r["dis"], r["any"])
                res[score_key(g, "inconsistency")] = _ratio(r["incons_num"], r["incons_den"])
                dices = [2.0 * agree / den for agree, den in r["pairs"] if den > 0]
                res[score_key(g, "overlap")] = float(np.mean(dices)) if dices else math.nan
            out.update(res)
        return out


@dataclass
class _MultiStats:
    """Per-class statistics of >= 2 members, reduced to group scores on demand."""
    agree_n: torch.Tensor            # (C,) voxels where all members predict class c
    dis_in_group: dict[str, torch.Tensor]   # group -> disagreeing voxels any member calls the group
    incons_num: torch.Tensor         # (C,) sum of std of channel c over voxels any member calls c
    incons_den: torch.Tensor         # (C,) number of those voxels
    volumes: list[torch.Tensor]      # per member (C,) voxels predicted as c
    pair_agree: list[tuple[int, int, torch.Tensor]]   # (a, b, (C,) voxels both call c)

    def cpu(self) -> "_MultiStats":
        return _MultiStats(self.agree_n.cpu(), {g: n.cpu() for g, n in self.dis_in_group.items()},
                           self.incons_num.cpu(), self.incons_den.cpu(), [v.cpu() for v in self.volumes],
                           [(a, b, n.cpu()) for a, b, n in self.pair_agree])

    def __add__(self, other: "_MultiStats") -> "_MultiStats":
        """Statistics of two disjoint parts of the grid: every entry is a sum, so they add."""
        return _MultiStats(self.agree_n + other.agree_n,
                           {g: n + other.dis_in_group[g] for g, n in self.dis_in_group.items()},
                           self.incons_num + other.incons_num, self.incons_den + other.incons_den,
                           [a + b for a, b in zip(self.volumes, other.volumes)],
                           [(a, b, n + m) for (a, b, n), (_, _, m) in zip(self.pair_agree, other.pair_agree)])

    def group_scores(self, g: str, idx: torch.Tensor) -> dict[str, float]:
        dis_in_g = self.dis_in_group[g]
        any_fg = self.agree_n[idx].sum() + dis_in_g
        dices = []
        for a, b, agree in self.pair_agree:
            den = float(self.volumes[a][idx].sum() + self.volumes[b][idx].sum())
            if den > 0:
                dices.append(2.0 * float(agree[idx].sum()) / den)
        return {score_key(g, "disagreement"): _ratio(dis_in_g, any_fg),
                score_key(g, "inconsistency"): _ratio(self.incons_num[idx].sum(), self.incons_den[idx].sum()),
                score_key(g, "overlap"): float(np.mean(dices)) if dices else math.nan}


def _argmax0(t: torch.Tensor) -> torch.Tensor:
    """Argmax over dim 0 (first maximum on ties); ``max`` is several times faster than
    ``argmax`` along the leading dim on CPU."""
    return t.max(0).indices


def slab_rows(num_classes: int, row_voxels: int, slab_mb: float) -> int:
    """z-rows of a slab holding at most ``slab_mb`` MB of float32 probabilities of ``num_classes``."""
    return max(1, int(slab_mb * 2 ** 20 // (4 * num_classes * max(1, row_voxels))))


def score_members_in_slabs(members: Sequence[Member], device: torch.device | str | None = None,
                           slab_mb: float = 256.0, groups: Mapping[str, Sequence[int]] = GROUPS,
                           num_classes: int = NUM_CLASSES,
                           member_groups: Sequence[Iterable[str] | None] | None = None) -> dict[str, float]:
    """The scores of :class:`MemberAccumulator` for ``members`` kept on the host (float16
    probabilities ``(C, Z, Y, X)`` or label maps ``(Z, Y, X)``, numpy views of any strides), scored
    on ``device`` (default: where the first member is) a z-slab at a time.

    Each slab is one accumulator over the members' slabs; its :meth:`~MemberAccumulator.partial`
    sums add up, so the scores equal scoring the whole grid at once up
    to float summation order, while only a slab of ``slab_mb`` MB of float32 probabilities per
    running sum exists on the device (docs/benchmarks.md, "Peak device memory of probability
    exports").  Raises ``ValueError("member <n>: ...")`` like :meth:`MemberAccumulator.add`.

    ``member_groups`` (one entry per member, ``None`` = every group): the groups each member counts
    for (``MemberAccumulator.add(groups=...)``).  The group-limited scores (per-group member
    subsets, left-out voxels, the mean's argmax over a subset) are per-voxel decisions summed over
    the grid too (:class:`LimitedPartialScores`), so they are scored a slab at a time as well.
    """
    members = list(members)
    if not members:
        raise ValueError("no members added")
    if member_groups is not None:
        member_groups = list(member_groups)
        if len(member_groups) != len(members):
            raise ValueError(f"{len(member_groups)} member_groups for {len(members)} members")
    spatial = []
    for n, m in enumerate(members):
        if m.ndim == 4 and m.shape[0] != num_classes:
            raise ValueError(f"member {n}: probabilities need {num_classes} channels, got shape {tuple(m.shape)}")
        if m.ndim not in (3, 4):
            raise ValueError(f"member {n}: expected (C, Z, Y, X) probabilities or a (Z, Y, X) label map, "
                             f"got shape {tuple(m.shape)}")
        spatial.append(tuple(m.shape[m.ndim - 3:]))
        if spatial[n] != spatial[0]:
            raise ValueError(f"member {n}: grid {spatial[n]} differs from the first member's {spatial[0]}")
    if device is None:
        device = members[0].device if isinstance(members[0], torch.Tensor) else torch.device("cpu")
    z, y, x = spatial[0]
    per = slab_rows(num_classes, y * x, slab_mb)
    return score_slab_stream(([as_tensor(m[:, a:a + per] if m.ndim == 4 else m[a:a + per], device)
                               for m in members] for a in range(0, max(z, 1), per)), groups, num_classes,
                             member_groups)


def score_slab_stream(slabs: Iterable[Member | Sequence[Member]], groups: Mapping[str, Sequence[int]] = GROUPS,
                      num_classes: int = NUM_CLASSES,
                      member_groups: Sequence[Iterable[str] | None] | None = None) -> dict[str, float]:
    """Scores of a case given as successive disjoint parts of its grid (z-slabs), each part one
    member (array/tensor) or every member's slab of it: one accumulator per part, partial sums
    added (:meth:`MemberAccumulator.partial`), so only a part is ever in memory.
    ``member_groups``: per member, the groups it counts for (``None``: every group)."""
    total: PartialScores | LimitedPartialScores | None = None
    for part in slabs:
        acc = MemberAccumulator(groups, num_classes)
        ms = [part] if isinstance(part, (np.ndarray, torch.Tensor)) else list(part)
        for m, gs in zip(ms, member_groups if member_groups is not None else [None] * len(ms)):
            acc.add(m, groups=gs)
        p = acc.partial()
        del acc
        total = p if total is None else total + p
    if total is None:
        raise ValueError("no members added")
    return total.scores(groups, num_classes)


def score_and_label(members: Member | Iterable[Member], groups: Mapping[str, Sequence[int]] = GROUPS,
                    num_classes: int = NUM_CLASSES) -> tuple[dict[str, float], torch.Tensor]:
    """Scores and pseudo label ``(Z, Y, X)`` uint8 of one case.

    ``members`` may be one array/tensor, a list, or a generator: with a generator that runs the
    predictor lazily (``(predict(m, image) for m in models)``), only one member's probabilities
    exist at a time.
    """
    if isinstance(members, (np.ndarray, torch.Tensor)):
        members = [members]
    acc = MemberAccumulator(groups, num_classes)
    for m in members:
        acc.add(m)
    return acc.scores(), acc.label()


def case_scores(members: Member | Iterable[Member], groups: Mapping[str, Sequence[int]] = GROUPS,
                num_classes: int = NUM_CLASSES) -> dict[str, float]:
    """Scores of one case from one member (array/tensor) or several (see module doc)."""
    return score_and_label(members, groups, num_classes)[0]
