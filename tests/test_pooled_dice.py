"""Batch Dice with per-sample annotated sets (issue 26, item 1): each class pools the samples
that keep it, in a fixed layout over all classes; checked against a hand-written reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flareseg.labels import NUM_CLASSES
from flareseg.losses.merge_max import PartialLabelLoss, channel_layout, reduce_logits, reduce_target


def reference(logits, target, sets, variant="merge_max", smooth=1e-5):
    """CE averaged over samples + mean over classes of the Dice pooled over the samples keeping them."""
    stats: dict[int, list[float]] = {}
    ce = 0.0
    for i, a in enumerate(sets):
        red = reduce_logits(logits[i:i + 1], a, variant)
        tgt = reduce_target(target[i:i + 1], a, variant)[:, 0]
        ce = ce + F.cross_entropy(red, tgt) / len(sets)
        p = torch.softmax(red, 1)
        for j, c in enumerate(channel_layout(a, variant).kept, start=1):
            g = (tgt == j).to(p.dtype)
            s = stats.setdefault(c, [0.0, 0.0, 0.0])
            s[0] = s[0] + (p[:, j] * g).sum()
            s[1] = s[1] + p[:, j].sum()
            s[2] = s[2] + g.sum()
    dice = [(2 * i + smooth) / (g + p + smooth) for i, p, g in stats.values()]
    return ce - sum(dice) / len(dice)


def _data(b=4, seed=7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, NUM_CLASSES, 2, 3, 4, dtype=torch.float64, generator=g),
            torch.randint(0, NUM_CLASSES, (b, 1, 2, 3, 4), generator=g))


@pytest.mark.parametrize("variant", ["merge_max", "released", "marginal", "naive"])
@pytest.mark.parametrize("sets", [[(1, 14), (1, 14), (2, 14), (2, 14)],
                                  [(1, 14), (1, 2, 3), (2, 14), (1, 2, 3, 13, 14)],
                                  [(3,), (1, 2), (1, 14), (1, 2)]])
def test_mixed_sets_pool_each_class_over_the_samples_that_keep_it(variant, sets):
    logits, target = _data()
    got = PartialLabelLoss(variant, batch_dice=True)(logits, target, sets)
    assert got.item() == pytest.approx(reference(logits, target, sets, variant).item(), rel=1e-10)


def test_one_set_gives_the_ordinary_batch_dice():
    logits, target = _data()
    loss = PartialLabelLoss("merge_max", batch_dice=True)
    want = loss(logits, target, (1, 2, 14)).item()            # the single-set path (nnU-Net's loss)
    assert loss.pooled(logits, target, (1, 2, 14)).item() == pytest.approx(want, rel=1e-10)
    assert loss.pooled(logits, target, [(1, 2, 14)] * 4).item() == pytest.approx(want, rel=1e-10)


def test_pooled_gradient_matches_reference():
    logits, target = _data()
    sets = [(1, 14), (2, 14), (1, 2, 3), (2, 14)]
    x = logits.clone().requires_grad_(True)
    PartialLabelLoss("merge_max", batch_dice=True)(x, target, sets).backward()
    y = logits.clone().requires_grad_(True)
    reference(y, target, sets).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-9, atol=1e-12)
