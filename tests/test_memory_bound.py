"""Peak device memory of probability exports (issue 17): the ``--save-probabilities`` map, stage-2's
members and its default scorer work in slabs, never on a full class-score map.

Counted on the CPU with a :class:`TorchDispatchMode` that records the storage size of every tensor a
torch op allocates, per pipeline step (the predictor's ``_Timer`` laps); on a GPU the same tensors
live on the device.  The formula these bounds come from is in docs/benchmarks.md ("Peak device
memory of probability exports")."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from flareseg.inference import predictor as predictor_mod
from flareseg.inference.predictor import FastPredictor
from tiny_model import write_model_folder
from flareseg.pseudolabel.uncertainty import MemberAccumulator, score_members_in_slabs, score_slab_stream

K = 15
BIAS = [0, 3, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]


class Allocations(TorchDispatchMode):
    """Bytes of every tensor storage a torch op creates (views and in-place results are not new),
    grouped by the predictor step they happen in (``step`` is set by the test)."""

    def __init__(self):
        super().__init__()
        self.step = "outside"
        self.sizes: dict[str, list[int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.sizes.setdefault(self.step, []).append(t.untyped_storage().nbytes())
        return out

    def largest(self, step: str) -> int:
        return max(self.sizes.get(step) or [0])

    def count_at_least(self, step: str, nbytes: int) -> int:
        return sum(s >= nbytes for s in self.sizes.get(step, []))


@pytest.fixture
def counted(monkeypatch):
    """Run ``fn`` under :class:`Allocations`, each allocation charged to the step whose
    ``_Timer.lap`` comes next (``read``, ..., ``sliding_window``, ``export``)."""
    def run(fn):
        mode = Allocations()

        def lap(self, name, _orig=predictor_mod._Timer.lap):
            mode.sizes.setdefault(name, []).extend(mode.sizes.pop("_pending", []))
            _orig(self, name)
        monkeypatch.setattr(predictor_mod._Timer, "lap", lap)
        mode.step = "_pending"
        with mode:
            result = fn()
        return result, mode
    return run


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), seed=3, class_bias=BIAS)  # 15 classes


def ct(shape, spacing_zyx, seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    arr = np.where((y / 0.8) ** 2 + (x / 0.85) ** 2 < 1, 40, -1000)
    arr = np.where((z / 0.5) ** 2 + ((y + 0.2) / 0.3) ** 2 + (x / 0.35) ** 2 < 1, 150, arr)
    img = sitk.GetImageFromArray((arr + rng.normal(0, 15, shape)).astype(np.int16))
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    return img


def export_bound(chunk_mb, k, model_shape, out_shape) -> int:
    """Largest probability-export tensor (bytes): a slab's largest float32 interpolation stage, or
    the model rows it reads promoted to float32 (docs/benchmarks.md)."""
    (zm, ym, xm), (z, y, x) = model_shape, out_shape
    row = max(ym * xm, y * xm, y * x)
    per = max(1, int(chunk_mb * 2 ** 20 // (4 * k * row)))
    rows_read = min(zm, math.ceil(per * zm / z) + 2)
    return 4 * k * max(per * row, rows_read * ym * xm)


def test_probability_export_is_bounded_by_the_slab_not_the_map(model, counted):
    """An input 8x the model grid: no step allocates anything near the full float16 map, the export
    step stays within the slab bound (or the label export's own largest tensor), and saving
    probabilities adds nothing to the sliding-window step."""
    img = ct((32, 64, 64), (1.25, 0.75, 0.75))              # model spacing (2.5, 1.5, 1.5)
    fp = FastPredictor(model, device="cpu", crop_to_body=False, chunk_mb=0.5)
    labels_only, base = counted(lambda: fp.run(img))
    res, mode = counted(lambda: fp.run(img, save_probabilities=True))
    assert np.array_equal(sitk.GetArrayFromImage(res.labels), sitk.GetArrayFromImage(labels_only.labels))
    model_shape, out_shape = res.stats["shape_model"], res.stats["shape_input_zyx"]
    full_map = 2 * K * math.prod(out_shape)                  # what the export used to build on the device
    bound = export_bound(0.5, K, model_shape, out_shape)
    assert bound < full_map // 4
    assert max(mode.largest(step) for step in mode.sizes) < full_map // 2
    assert mode.largest("export") <= max(bound, base.largest("export"))
    assert sorted(mode.sizes["sliding_window"]) == sorted(base.sizes["sliding_window"])
    p = res.probabilities.astype(np.float32)
    assert p.shape == (K, *out_shape) and np.allclose(p.sum(0), 1, atol=2e-2)


def test_slab_hook_scores_equal_the_full_map_hook_without_full_maps(model, counted):
    """Stage-2's default scorer: the softmax as slabs gives the same scores (to summation order)
    and labels as the full-map hook, and allocates no extra model-size float32 map."""
    img = ct((16, 32, 32), (2.5, 1.5, 1.5), seed=1)          # at model spacing: labels from the softmax
    fp = FastPredictor(model, device="cpu", crop_to_body=False, chunk_mb=0.01)
    full, full_mode = counted(lambda: fp.run(img, prob_hook=lambda p: score_slab_stream([p])))
    slab, slab_mode = counted(lambda: fp.run(img, slab_hook=score_slab_stream))
    _, base = counted(lambda: fp.run(img))
    assert np.array_equal(sitk.GetArrayFromImage(slab.labels), sitk.GetArrayFromImage(full.labels))
    assert slab.hook_result.keys() == full.hook_result.keys()
    for key, v in full.hook_result.items():
        assert slab.hook_result[key] == pytest.approx(v, rel=1e-9, nan_ok=True)
    model_map = 4 * K * math.prod(slab.stats["shape_model"])
    n_base = base.count_at_least("sliding_window", model_map)
    assert full_mode.count_at_least("sliding_window", model_map) >= n_base + 2   # float copy + softmax
    assert slab_mode.count_at_least("sliding_window", model_map) == n_base


def random_members(shape, n_soft, seed=0):
    rng = np.random.default_rng(seed)
    members = []
    for _ in range(n_soft):
        logits = rng.normal(0, 2, (K, *shape)) + np.array(BIAS)[:, None, None, None]
        e = np.exp(logits - logits.max(0))
        members.append((e / e.sum(0)).astype(np.float16))
    members.append(np.flip(members[0], 3))                                # a strided (mirrored) view
    members.append(rng.choice([0, 1, 3, 14], shape).astype(np.uint8))     # an external label map
    return members


def test_member_slabs_add_up_to_the_whole_grid_scores_in_bounded_memory():
    shape = (12, 10, 9)
    members = random_members(shape, 2)
    acc = MemberAccumulator()
    for m in members:
        acc.add(m)
    whole = acc.scores()
    slab_mb = 4 * K * 2 * 10 * 9 / 2 ** 20                    # two z-rows of float32 scores per slab
    mode = Allocations()
    with mode:
        slabbed = score_members_in_slabs(members, "cpu", slab_mb=slab_mb)
    assert whole["organ_disagreement"] > 0 and whole.keys() == slabbed.keys()
    for key, v in whole.items():
        assert slabbed[key] == pytest.approx(v, rel=1e-9, nan_ok=True)
    s = 2 * 10 * 9                                           # voxels of a slab
    m = len(members)
    assert mode.largest("outside") <= max(4 * K, 8 * m) * s  # float32 (K, S) or the (M, S) int64 labels
    assert mode.largest("outside") < 4 * K * math.prod(shape) // 4


def test_member_errors_still_name_the_member():
    members = random_members((4, 5, 6), 1)
    members[-1] = members[-1].copy()
    members[-1][3, 0, 0] = 99
    with pytest.raises(ValueError, match="member 2: label values"):
        score_members_in_slabs(members, "cpu", slab_mb=1e-4)
    with pytest.raises(ValueError, match="member 1: grid"):
        score_members_in_slabs([members[0], members[0][:, :3]], "cpu")


@pytest.mark.parametrize("seed", [3, 4])
def test_group_limited_members_are_scored_in_bounded_slabs(seed):
    """A label member counting for the organ score only (member_label_groups): the group-limited
    scores are slab sums too -- equal to MemberAccumulator's whole-grid scores (to summation order)
    while no tensor larger than a slab's float32 scores or int64 member labels is allocated."""
    rng = np.random.default_rng(seed)
    shape = (12, 10, 9)

    def probs():
        p = rng.random((K,) + shape).astype(np.float32) ** 4
        p[14] *= 6                                                  # some tumor wins, so tumor scores exist
        return (p / p.sum(0, keepdims=True)).astype(np.float16)

    members = [probs(), probs(), rng.integers(0, K - 1, shape).astype(np.uint8),
               rng.choice([0, 2, 14], shape).astype(np.uint8)]
    groups = [None, None, ("organ",), ("tumor",)]
    want = MemberAccumulator()
    for m, g in zip(members, groups):
        want.add(m, groups=g)
    assert want.limited
    expected = want.scores()
    slab_mb = 4 * K * 2 * 10 * 9 / 2 ** 20                    # two z-rows of float32 scores per slab
    mode = Allocations()
    with mode:
        got = score_members_in_slabs(members, "cpu", slab_mb=slab_mb, member_groups=groups)
    assert got.keys() == expected.keys()
    assert expected["organ_members"] == 3 and expected["tumor_members"] == 3
    assert expected["organ_disagreement"] > 0 and expected["tumor_voxels"] > 0
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-6, nan_ok=True), k   # float32 per-voxel entropy
    s = 2 * 10 * 9                                           # voxels of a slab
    assert mode.largest("outside") <= max(4 * K, 8 * len(members)) * s
    assert mode.largest("outside") < 4 * K * math.prod(shape) // 4
    # every member counting for every group: the plain slab path, equal to whole-grid scores
    full = score_members_in_slabs(members, "cpu", slab_mb=1e-6, member_groups=[None] * 4)
    whole = MemberAccumulator()
    for m in members:
        whole.add(m)
    assert not whole.limited
    for k, v in whole.scores().items():
        assert full[k] == pytest.approx(v, rel=1e-6, nan_ok=True), k
