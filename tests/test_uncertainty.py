"""Organ/tumor uncertainty on hand-made probability volumes; expected values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flareseg.pseudolabel.uncertainty import MemberAccumulator, case_scores, score_and_label, voxel_entropy

C = 15


def probs_of(*voxels: dict[int, float]) -> np.ndarray:
    """(15, 1, 1, N) probabilities, one dict {class: prob} per voxel."""
    p = np.zeros((C, 1, 1, len(voxels)), np.float32)
    for i, v in enumerate(voxels):
        for c, q in v.items():
            p[c, 0, 0, i] = q
    return p


def labels_of(*vals: int) -> np.ndarray:
    return np.array(vals, np.uint8).reshape(1, 1, -1)


def H(*q: float) -> float:
    return -sum(x * math.log(x) for x in q if x > 0)


def test_single_member_entropy_by_group():
    p = probs_of({0: 1.0},                      # background, certain
                 {1: 0.75, 0: 0.25},            # liver
                 {3: 1.0},                      # spleen, certain
                 {14: 0.5, 1: 0.25, 0: 0.25})   # tumor
    s = case_scores(p)
    assert s["n_members"] == 1
    assert s["organ_voxels"] == 2 and s["tumor_voxels"] == 1
    assert s["organ_entropy"] == pytest.approx((H(0.75, 0.25) + 0.0) / 2, rel=1e-5)
    assert s["tumor_entropy"] == pytest.approx(1.5 * math.log(2), rel=1e-5)
    assert "organ_disagreement" not in s      # needs >= 2 members


def test_absent_tumor_is_nan_with_zero_voxels():
    s = case_scores(probs_of({0: 0.9, 14: 0.1}, {2: 0.6, 14: 0.4}))
    assert s["tumor_voxels"] == 0 and math.isnan(s["tumor_entropy"])
    assert s["organ_entropy"] == pytest.approx(H(0.6, 0.4), rel=1e-5)


def test_three_label_members_by_hand():
    m1 = labels_of(0, 1, 1, 3, 14, 0)
    m2 = labels_of(0, 1, 3, 3, 0, 0)
    m3 = labels_of(0, 1, 1, 3, 14, 14)
    s = case_scores([m1, m2, m3])
    h3 = H(2 / 3, 1 / 3)
    sd = math.sqrt(2 / 9)     # population std of a one-hot with 1 or 2 ones among 3 members
    # organ: any member predicts an organ at voxels 1,2,3; members disagree at voxel 2
    assert s["organ_disagreement"] == pytest.approx(1 / 3)
    # tumor: any member predicts tumor at 4,5; both disagree
    assert s["tumor_disagreement"] == pytest.approx(1.0)
    # mean prediction: organ at 1,2,3 (entropy only at 2); tumor at 4 (2/3 votes), not at 5
    assert s["organ_voxels"] == 3 and s["tumor_voxels"] == 1
    assert s["organ_entropy"] == pytest.approx(h3 / 3, rel=1e-5)
    assert s["tumor_entropy"] == pytest.approx(h3, rel=1e-5)
    # inconsistency: liver union {1,2} stds (0, sd); spleen union {2,3} (sd, 0) -> 2 sd / 4
    assert s["organ_inconsistency"] == pytest.approx(sd / 2, rel=1e-5)
    assert s["tumor_inconsistency"] == pytest.approx(sd, rel=1e-5)
    # overlap: pairwise pooled Dice (1,2)=2/3, (1,3)=1, (2,3)=2/3; tumor 0, 2/3, 0
    assert s["organ_overlap"] == pytest.approx(7 / 9)
    assert s["tumor_overlap"] == pytest.approx(2 / 9)


def test_two_soft_members_by_hand():
    a = probs_of({14: 0.8, 0: 0.2}, {0: 1.0})
    b = probs_of({14: 0.4, 0: 0.6}, {0: 1.0})
    s = case_scores([a, b])
    assert s["tumor_disagreement"] == pytest.approx(1.0)
    assert s["tumor_inconsistency"] == pytest.approx(0.2, rel=1e-5)   # |0.8 - 0.4| / 2
    assert s["tumor_entropy"] == pytest.approx(H(0.6, 0.4), rel=1e-5)
    assert s["tumor_overlap"] == 0.0
    assert math.isnan(s["organ_entropy"]) and math.isnan(s["organ_disagreement"])
    assert math.isnan(s["organ_overlap"]) and s["organ_voxels"] == 0


def test_identical_members_agree_perfectly_and_label_is_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(C, 3, 4, 5)).astype(np.float32)
    p = torch.softmax(torch.from_numpy(logits) * 3, 0)
    acc = MemberAccumulator()
    acc.add(p)
    acc.add(p.numpy())                          # numpy and torch mix
    s = acc.scores()
    assert s["organ_disagreement"] == 0.0
    assert s["organ_inconsistency"] == pytest.approx(0.0, abs=1e-4)
    assert s["organ_overlap"] == 1.0
    single = case_scores(p)
    assert s["organ_entropy"] == pytest.approx(single["organ_entropy"], rel=1e-5)
    assert torch.equal(acc.label().long(), p.argmax(0))


def test_caller_tensor_is_not_modified():
    a = torch.from_numpy(probs_of({1: 0.7, 0: 0.3}))
    before = a.clone()
    acc = MemberAccumulator()
    acc.add(a)
    acc.add(labels_of(0))
    acc.add(probs_of({2: 1.0}))
    acc.scores()
    assert torch.equal(a, before)


def test_entropy_map_zero_for_one_hot():
    p = torch.from_numpy(probs_of({0: 1.0}, {5: 1.0}))
    assert torch.count_nonzero(voxel_entropy(p)) == 0


@pytest.mark.parametrize("bad, msg", [
    (np.full((C, 1, 1, 2), 3.0, np.float32), "sum to 1"),          # logits
    (np.zeros((C, 1, 1, 3), np.float32) + 1 / C, "grid"),          # other grid
    (labels_of(0, 15), "0..14"),                                   # label out of range
    (np.zeros((4, 1, 1, 2), np.float32), "15 channels"),
])
def test_bad_members_are_rejected(bad, msg):
    acc = MemberAccumulator()
    acc.add(probs_of({0: 1.0}, {1: 1.0}))
    with pytest.raises(ValueError, match=msg):
        acc.add(bad)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    m = [labels_of(0, 1, 1, 3, 14, 0), probs_of({0: 1.0}, {1: .6, 0: .4}, {1: 1.0}, {3: 1.0},
                                                 {14: .9, 0: .1}, {14: .3, 0: .7})]
    cpu = case_scores(m)
    gpu = case_scores([torch.from_numpy(x).cuda() for x in m])
    for k, v in cpu.items():
        assert gpu[k] == pytest.approx(v, rel=1e-5, nan_ok=True)


def _by_definition(members: list[np.ndarray]) -> dict[str, float]:
    """Voxel-by-voxel python loops straight from the definitions (tiny volumes only)."""
    P = [m.reshape(C, -1) if m.ndim == 4 else np.eye(C)[m.reshape(-1)].T for m in members]
    N, M = P[0].shape[1], len(P)
    out = {}
    for g, cls in {"organ": set(range(1, 14)), "tumor": {14}}.items():
        ent, dis, anyg, inc_num, inc_den = [], 0, 0, 0.0, 0
        for v in range(N):
            q = [p[:, v] for p in P]
            mean = sum(q) / M
            labs = [int(np.argmax(x)) for x in q]
            if int(np.argmax(mean)) in cls:
                ent.append(-sum(x * math.log(x) for x in mean if x > 0))
            if any(lab in cls for lab in labs):
                anyg += 1
                dis += len(set(labs)) > 1
            for c in cls & set(labs):
                inc_num += float(np.std([x[c] for x in q]))
                inc_den += 1
        out[f"{g}_entropy"] = float(np.mean(ent)) if ent else math.nan
        out[f"{g}_disagreement"] = dis / anyg if anyg else math.nan
        out[f"{g}_inconsistency"] = inc_num / inc_den if inc_den else math.nan
    return out


def test_mixed_random_members_match_the_definitions():
    rng = np.random.default_rng(7)
    base = rng.integers(0, C, size=(3, 4, 5))
    members = []
    for k in range(3):
        logits = rng.normal(size=(C, 3, 4, 5)) + 2.5 * np.eye(C)[base].transpose(3, 0, 1, 2)
        members.append((np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32))
    members.append(base.astype(np.uint8))                       # an external hard label map
    got = case_scores(members)
    for k, v in _by_definition(members).items():
        assert got[k] == pytest.approx(v, rel=1e-4, nan_ok=True), k


def test_generator_members_stream_and_give_label():
    made = []

    def members():
        for m in (labels_of(0, 1, 14), probs_of({0: 1.0}, {1: 0.9, 0: 0.1}, {14: 0.6, 0: 0.4})):
            made.append(1)
            yield m

    scores, label = score_and_label(members())
    assert len(made) == 2 and scores["n_members"] == 2
    assert label.dtype == torch.uint8 and label.ravel().tolist() == [0, 1, 14]


# ------------------------------------------------------------------ members that count for some groups only

def _issue_repro() -> tuple[np.ndarray, np.ndarray]:
    """Issue 16's case: the fine model's probabilities (tumor inside the liver) and an external
    organ-only label map of the same case (its tumor voxels called liver)."""
    lab = np.zeros((6, 10, 10), np.uint8)
    lab[1:5, 2:8, 2:8] = 1
    lab[2:4, 3:6, 3:6] = 14
    probs = np.full((C,) + lab.shape, 0.01, np.float32)
    np.put_along_axis(probs, lab[None].astype(np.int64), 0.86, 0)
    return probs, np.where(lab == 14, 1, lab).astype(np.uint8)


def test_organ_only_label_members_leave_the_tumor_score_to_the_fine_model():
    probs, ext = _issue_repro()
    acc = MemberAccumulator()
    acc.add(probs)
    acc.add(ext, groups=("organ",))
    acc.add(ext.copy(), groups=["organ"])
    s = acc.scores()
    own = case_scores(probs)
    # the tumor score is the fine model's own: 18 tumor voxels, its entropy there; never NaN
    assert s["tumor_members"] == 1 and s["tumor_voxels"] == own["tumor_voxels"] == 18
    assert s["tumor_entropy"] == pytest.approx(own["tumor_entropy"], rel=1e-6)
    assert math.isnan(s["tumor_disagreement"])            # one tumor member: nothing to compare
    # organ score: all three members, the fine model's tumor voxels left out (the externals say
    # nothing about tumor there), so the members agree perfectly on the organs
    assert s["organ_members"] == 3 and s["organ_voxels"] == int((ext == 1).sum()) - 18
    assert s["organ_disagreement"] == 0 and s["organ_overlap"] == 1
    q = [0.86 / 3 + 2 / 3] + [0.01 / 3] * 14               # mean prediction on a liver voxel
    assert s["organ_entropy"] == pytest.approx(H(*q), rel=1e-5)
    # the pseudo label is the fine model's (the organ-only members do not vote the tumor away)
    assert int((acc.label() == 14).sum()) == 18


def test_members_scoring_every_group_keep_the_plain_scores():
    probs, ext = _issue_repro()
    plain = case_scores([probs, ext])
    acc = MemberAccumulator()
    acc.add(probs)
    acc.add(ext, groups=("organ", "tumor"))
    assert acc.scores() == plain


def _by_definition_limited(members: list[np.ndarray], groups: list[set[str]]) -> dict[str, float]:
    """Per group: its members only, on the voxels where none of them predicts a class of a group
    that some of them do not score (python loops, tiny volumes only)."""
    G = {"organ": set(range(1, 14)), "tumor": {14}}
    out = {}
    for g in G:
        idx = [i for i, gs in enumerate(groups) if g in gs]
        partial = set().union(*(G[h] for h in G if any(h not in groups[i] for i in idx))) - G[g]
        P = [members[i].reshape(C, -1) if members[i].ndim == 4 else np.eye(C)[members[i].reshape(-1)].T
             for i in idx]
        keep = [v for v in range(P[0].shape[1]) if not any(int(np.argmax(p[:, v])) in partial for p in P)]
        sub = [p[:, keep].reshape(C, 1, 1, -1).astype(np.float32) for p in P]
        ref = _by_definition(sub) if len(sub) > 1 else {
            f"{h}_entropy": v for h, v in _by_definition(sub + sub).items() if h.endswith("entropy")}
        out.update({k: v for k, v in ref.items() if k.startswith(g)})
    return out


@pytest.mark.parametrize("seed", [3, 11])
def test_limited_members_match_the_definitions(seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, C, size=(3, 4, 5))
    members, groups = [], []
    for k in range(2):
        logits = rng.normal(size=(C, 3, 4, 5)) + 2.5 * np.eye(C)[base].transpose(3, 0, 1, 2)
        members.append((np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32))
        groups.append({"organ", "tumor"})
    organ_only = np.where(base == 14, 1, base).astype(np.uint8)
    organ_only[0, 0, :2] = 14                 # an 'organ-only' folder may still hold tumor values
    members += [organ_only, np.roll(base, 1, axis=2).astype(np.uint8)]
    groups += [{"organ"}, {"organ", "tumor"}]
    acc = MemberAccumulator()
    for m, g in zip(members, groups):
        acc.add(m, groups=g)
    got = acc.scores()
    assert got["organ_members"] == 4 and got["tumor_members"] == 3
    for k, v in _by_definition_limited(members, groups).items():
        assert got[k] == pytest.approx(v, rel=1e-4, nan_ok=True), k


def test_a_group_without_members_has_no_score():
    acc = MemberAccumulator()
    acc.add(labels_of(0, 1, 14), groups=("organ",))
    s = acc.scores()
    assert s["tumor_members"] == 0 and s["tumor_voxels"] == 0 and math.isnan(s["tumor_entropy"])
    assert s["organ_voxels"] == 1 and s["organ_entropy"] == 0 and acc.label().ravel().tolist() == [0, 1, 14]


def test_only_label_maps_can_be_limited():
    acc = MemberAccumulator()
    with pytest.raises(ValueError, match="only a label map"):
        acc.add(probs_of({0: 1.0}, {1: 1.0}), groups=("organ",))
    with pytest.raises(ValueError, match="non-empty subset"):
        acc.add(labels_of(0, 1), groups=("lungs",))
    assert acc.n_members == 0
