import math

import pytest
import torch

from flareseg.labels import ALL_ANNOTATED, NUM_CLASSES, TUMOR
from flareseg.losses.merge_max import (
    PartialLabelLoss,
    channel_layout,
    deep_supervision_weights,
    reduce_logits,
    reduce_target,
)

SMOOTH = 1e-5


def _tiny():
    """(1, 4, 1, 1, 2) logits with classes 0..3 and a 2-voxel target."""
    logits = torch.tensor([[1.0, 0.0], [2.0, 2.0], [3.0, -1.0], [0.5, 1.0]]).view(1, 4, 1, 1, 2)
    target = torch.tensor([2, 1]).view(1, 1, 1, 1, 2)
    return logits, target


def _log_softmax2(a, b):
    """-log p(a) for a two-way softmax over logits (a, b)."""
    return math.log(1 + math.exp(b - a))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_merge_max_equals_hand_computed_value():
    logits, target = _tiny()
    # annotated {1}: reduced = [max(l0, l2, l3), l1]; voxel 0: [3, 2], target 2 -> 0; voxel 1: [1, 2], target 1.
    ce = (_log_softmax2(3, 2) + _log_softmax2(2, 1)) / 2
    p1 = [_sigmoid(2 - 3), _sigmoid(2 - 1)]
    dice = (2 * p1[1] + SMOOTH) / (1 + sum(p1) + SMOOTH)
    loss = PartialLabelLoss("merge_max")(logits, target, (1,))
    assert loss.item() == pytest.approx(ce - dice, rel=1e-6)


def test_marginal_equals_hand_computed_value():
    logits, target = _tiny()
    m0 = math.log(math.exp(1) + math.exp(3) + math.exp(0.5))
    m1 = math.log(math.exp(0) + math.exp(-1) + math.exp(1))
    ce = (_log_softmax2(m0, 2) + _log_softmax2(2, m1)) / 2
    p1 = [_sigmoid(2 - m0), _sigmoid(2 - m1)]
    dice = (2 * p1[1] + SMOOTH) / (1 + sum(p1) + SMOOTH)
    loss = PartialLabelLoss("marginal")(logits, target, [1])
    assert loss.item() == pytest.approx(ce - dice, rel=1e-6)


def test_released_keeps_tumor_channel_by_hand():
    logits, target = _tiny()
    # tumor = class 3, unannotated: reduced = [max(l0, l2), l1, l3]
    red = reduce_logits(logits, (1,), "released", tumor=3)
    assert red[0, 0, 0, 0].tolist() == [3.0, 0.0]
    assert red[0, :, 0, 0, 0].tolist() == [3.0, 2.0, 0.5]
    assert red[0, :, 0, 0, 1].tolist() == [0.0, 2.0, 1.0]
    assert reduce_target(target, (1,), "released", num_classes=4, tumor=3).flatten().tolist() == [0, 1]

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    p = [softmax([3, 2, 0.5]), softmax([0, 2, 1])]
    ce = (-math.log(p[0][0]) - math.log(p[1][1])) / 2
    d1 = (2 * p[1][1] + SMOOTH) / (1 + p[0][1] + p[1][1] + SMOOTH)
    d3 = SMOOTH / (p[0][2] + p[1][2] + SMOOTH)
    loss = PartialLabelLoss("released", tumor=3)(logits, target, (1,))
    assert loss.item() == pytest.approx(ce - (d1 + d3) / 2, rel=1e-6)


def test_gradient_reaches_only_max_channels():
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 2, 3, 3)
    # unannotated channel 5 dominates the merged set in the first half, channel 9 in the second
    logits[:, 5, 0] += 20
    logits[:, 9, 1] += 20
    logits.requires_grad_(True)
    target = torch.randint(0, NUM_CLASSES, (2, 1, 2, 3, 3))
    PartialLabelLoss("merge_max")(logits, target, (1, 14)).backward()
    g = logits.grad.abs().sum(dim=(0, 3, 4))  # (C, Z)
    for c in range(NUM_CLASSES):
        if c in (1, 14):
            assert (g[c] > 0).all(), c
        elif c == 5:
            assert g[c, 0] > 0 and g[c, 1] == 0
        elif c == 9:
            assert g[c, 1] > 0 and g[c, 0] == 0
        else:
            assert (g[c] == 0).all(), c


def test_marginal_gradient_reaches_every_merged_channel():
    logits = torch.randn(1, NUM_CLASSES, 2, 2, 2, requires_grad=True)
    target = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    PartialLabelLoss("marginal")(logits, target, (1,)).backward()
    assert (logits.grad.abs().sum(dim=(0, 2, 3, 4)) > 0).all()


@pytest.mark.parametrize("batch_dice", [False, True])
def test_fully_annotated_equals_nnunet_dc_and_ce(batch_dice):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    ref = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                         weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    torch.manual_seed(1)
    logits = torch.randn(2, NUM_CLASSES, 4, 5, 6, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (2, 1, 4, 5, 6)).double()
    for variant in ("merge_max", "marginal", "released", "naive"):
        ours = PartialLabelLoss(variant, batch_dice=batch_dice)(logits, target, ALL_ANNOTATED[::-1])
        assert ours.item() == pytest.approx(ref(logits, target).item(), rel=1e-6)
    # partial sets: the reduced problem is an ordinary nnU-Net problem
    for annotated in [(1,), (1, 2, 3, 13, 14), (14,)]:
        red, tgt = reduce_logits(logits, annotated), reduce_target(target, annotated)
        ours = PartialLabelLoss("merge_max", batch_dice=batch_dice)(logits, target, annotated)
        assert ours.item() == pytest.approx(ref(red, tgt).item(), rel=1e-6)


@pytest.mark.parametrize(
    "variant,annotated,channels,merged",
    [
        ("merge_max", (1, 14), 3, tuple(c for c in range(15) if c not in (1, 14))),
        ("marginal", (14, 2), 3, tuple(c for c in range(15) if c not in (2, 14))),
        ("released", (1, 2), 4, tuple(c for c in range(14) if c not in (1, 2))),
        ("released", (1, 14), 3, tuple(c for c in range(15) if c not in (1, 14))),
        ("naive", (1, 14), 15, (0,)),
    ],
)
def test_variant_shapes_and_targets(variant, annotated, channels, merged):
    layout = channel_layout(annotated, variant)
    assert layout.merged == merged and 1 + len(layout.kept) == channels
    logits = torch.randn(2, NUM_CLASSES, 3, 4, 5)
    assert reduce_logits(logits, annotated, variant).shape == (2, channels, 3, 4, 5)
    target = torch.arange(NUM_CLASSES).view(1, NUM_CLASSES, 1, 1).expand(2, -1, 4, 5)  # (B, Z, Y, X)
    red_t = reduce_target(target, annotated, variant)
    assert red_t.shape == target.shape and red_t.dtype == torch.long
    expected = [layout.kept.index(c) + 1 if c in annotated else 0 for c in range(NUM_CLASSES)]
    assert red_t[0, :, 0, 0].tolist() == expected
    if variant == "naive":
        assert expected == [c if c in annotated else 0 for c in range(NUM_CLASSES)]
    else:  # annotated classes in sorted order after the merged channel
        assert [expected[c] for c in sorted(annotated)] == list(range(1, len(annotated) + 1))
    if variant == "released" and TUMOR not in annotated:
        # tumor keeps the last channel, which the target never contains (tumor voxels -> merged)
        assert layout.kept[-1] == TUMOR and len(layout.kept) not in red_t.unique().tolist()
        assert red_t[0, TUMOR, 0, 0] == 0


def test_merged_channel_is_max_of_rest():
    logits = torch.randn(1, NUM_CLASSES, 2, 2, 2)
    red = reduce_logits(logits, (3, 7))
    rest = [c for c in range(NUM_CLASSES) if c not in (3, 7)]
    assert torch.equal(red[:, 0], logits[:, rest].max(1).values)
    assert torch.equal(red[:, 1:], logits[:, [3, 7]])


def test_deep_supervision_list_input():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.manual_seed(2)
    shapes = [(8, 8, 8), (4, 4, 4), (2, 2, 2)]
    outs = [torch.randn(2, NUM_CLASSES, *s, dtype=torch.float64) for s in shapes]
    tgts = [torch.randint(0, NUM_CLASSES, (2, 1, *s)) for s in shapes]
    w = deep_supervision_weights(3)
    assert w == pytest.approx((2 / 3, 1 / 3, 0.0))
    loss = PartialLabelLoss("merge_max")
    single = [loss(o, t, (1, 14)).item() for o, t in zip(outs, tgts)]
    assert loss(outs, tgts, (1, 14)).item() == pytest.approx(w[0] * single[0] + w[1] * single[1], rel=1e-9)
    ref = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                {}, 1, 1, None, MemoryEfficientSoftDiceLoss), w)
    assert loss(outs, tgts, ALL_ANNOTATED).item() == pytest.approx(ref(outs, tgts).item(), rel=1e-9)
    explicit = PartialLabelLoss("merge_max", ds_weights=(0, 0, 1))
    assert explicit(outs, tgts, (1, 14)).item() == pytest.approx(single[2], rel=1e-9)


def test_per_sample_annotated_sets_split_the_batch():
    """Per-sample Dice: a mixed batch is the sample-weighted mean of its groups' losses."""
    torch.manual_seed(3)
    logits = torch.randn(3, NUM_CLASSES, 2, 3, 3, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (3, 1, 2, 3, 3))
    loss = PartialLabelLoss("merge_max", batch_dice=False)
    mixed = loss(logits, target, [(1, 2), (1, 2, 14), (2, 1)])
    a = loss(logits[[0, 2]], target[[0, 2]], (1, 2))
    b = loss(logits[[1]], target[[1]], (1, 2, 14))
    assert mixed.item() == pytest.approx(2 / 3 * a.item() + 1 / 3 * b.item(), rel=1e-9)
    assert loss(logits, target, [(1, 2)] * 3).item() == pytest.approx(loss(logits, target, (1, 2)).item())


def test_bad_inputs_raise_clear_errors():
    logits = torch.randn(1, NUM_CLASSES, 2, 2, 2)
    target = torch.zeros(1, 1, 2, 2, 2)
    loss = PartialLabelLoss()
    with pytest.raises(ValueError, match="empty"):
        loss(logits, target, ())
    with pytest.raises(ValueError, match="foreground"):
        loss(logits, target, (0, 1))
    with pytest.raises(ValueError, match="target values"):
        loss(logits, target + 15, (1,))
    with pytest.raises(ValueError, match="unknown loss variant"):
        PartialLabelLoss("maxmerge")
    with pytest.raises(ValueError, match="lists"):
        loss([logits], target, (1,))


def test_annotated_may_be_tensor_or_array():
    import numpy as np

    logits = torch.randn(1, NUM_CLASSES, 2, 2, 2)
    target = torch.randint(0, NUM_CLASSES, (1, 1, 2, 2, 2))
    loss = PartialLabelLoss()
    want = loss(logits, target, (1, 14)).item()
    assert loss(logits, target, torch.tensor([14, 1])).item() == pytest.approx(want)
    assert loss(logits, target, np.array([1, 14])).item() == pytest.approx(want)


def _ddp_worker(rank, store, logits, target, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        x = logits[rank:rank + 1].clone().requires_grad_(True)
        loss = PartialLabelLoss("merge_max", batch_dice=True, weight_ce=0, ddp=True)(x, target[rank:rank + 1], (1, 14))
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": x.grad}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_batch_dice_two_processes_sum_statistics_and_gradients(tmp_path):
    """Each rank holds one sample; the DDP batch Dice equals the single-process batch Dice of both."""
    import torch.multiprocessing as mp

    torch.manual_seed(5)
    logits = torch.randn(2, NUM_CLASSES, 2, 3, 3, dtype=torch.float64)
    target = torch.randint(0, NUM_CLASSES, (2, 1, 2, 3, 3))
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), logits, target, tmp_path), nprocs=2, join=True)
    x = logits.clone().requires_grad_(True)
    want = PartialLabelLoss("merge_max", batch_dice=True, weight_ce=0)(x, target, (1, 14))
    want.backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["loss"].item() == pytest.approx(want.item(), rel=1e-9)
        # every rank's loss depends on this rank's share; DDP then averages over the 2 ranks
        assert torch.allclose(got["grad"], 2 * x.grad[rank:rank + 1])
