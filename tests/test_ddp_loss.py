"""DDP batch Dice with per-sample annotated sets (issue 26, item 1), two gloo ranks on the CPU.

CutMix narrows a sample's label type, so samples within and across ranks carry different
annotated sets.  For every combination below, the mean of the two ranks' losses equals the
single-process loss of all four samples with the same per-sample sets, each rank's logit gradient
is ``world x`` the single-process one (DDP divides by the world size), and a DDP-wrapped network's
averaged parameter gradients equal the single-process ones.  The ranks meet through a file store
in tmp_path (no port); a bounded timeout turns a hang (the defect: all-reduce of tensors of
different lengths) into a failure."""
from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flareseg.labels import NUM_CLASSES
from flareseg.losses.merge_max import PartialLabelLoss, deep_supervision_weights

WORLD = 2
#: id -> (variant, per-sample sets of the 4 samples; rank r holds samples 2r, 2r+1)
CASES = {
    "same_set_everywhere": ("merge_max", [(1, 14)] * 4),
    "equal_size_other_classes": ("merge_max", [(1, 14), (1, 14), (2, 14), (2, 14)]),
    "different_sizes": ("merge_max", [(1, 14), (1, 14), (1, 2, 3, 13), (1, 2, 3, 13)]),
    "mixed_within_ranks": ("merge_max", [(1, 14), (1, 2, 3), (2, 14), (1, 2, 3, 13, 14)]),
    "released_mixed": ("released", [(1, 2), (1, 14), (3,), (1, 2)]),
    "marginal_mixed": ("marginal", [(5, 6), (1, 14), (1, 14), (11,)]),
}


def _data():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(4, NUM_CLASSES, 4, 6, 6, dtype=torch.float64, generator=g)
    target = torch.randint(0, NUM_CLASSES, (4, 1, 4, 6, 6), generator=g)
    image = torch.randn(4, 1, 4, 6, 6, dtype=torch.float64, generator=g)
    return logits, target, image


def _deep(x, target):
    """Two deep-supervision scales: full resolution and a 2x downsampled one."""
    low = torch.nn.functional.avg_pool3d(x, 2)
    return [x, low], [target, target[:, :, ::2, ::2, ::2]]


def _net():
    torch.manual_seed(3)
    return torch.nn.Conv3d(1, NUM_CLASSES, 3, padding=1).double()


def _loss(variant):
    return PartialLabelLoss(variant, batch_dice=True, ddp=dist.is_initialized(),
                            ds_weights=deep_supervision_weights(2, last_weight=0.25))


def _worker(rank, store, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    try:
        logits, target, image = _data()
        mine = slice(2 * rank, 2 * rank + 2)
        res = {}
        for name, (variant, sets) in CASES.items():
            x = logits[mine].clone().requires_grad_(True)
            outs, tgts = _deep(x, target[mine])
            loss = _loss(variant)(outs, tgts, sets[mine])
            loss.backward()
            net = torch.nn.parallel.DistributedDataParallel(_net())
            outs, tgts = _deep(net(image[mine]), target[mine])
            _loss(variant)(outs, tgts, sets[mine]).backward()
            res[name] = {"loss": loss.detach(), "grad": x.grad,
                         "params": [p.grad.clone() for p in net.module.parameters()]}
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_loss")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_rank_losses_and_gradients_equal_the_single_process_ones(name, ranks):
    variant, sets = CASES[name]
    logits, target, image = _data()
    x = logits.clone().requires_grad_(True)
    outs, tgts = _deep(x, target)
    want = _loss(variant)(outs, tgts, sets)
    want.backward()
    mean = sum(r[name]["loss"] for r in ranks) / WORLD
    assert mean.item() == pytest.approx(want.item(), rel=1e-10)
    for rank, r in enumerate(ranks):
        torch.testing.assert_close(r[name]["grad"], WORLD * x.grad[2 * rank:2 * rank + 2], rtol=1e-9, atol=1e-12)
    net = _net()
    outs, tgts = _deep(net(image), target)
    _loss(variant)(outs, tgts, sets).backward()
    for rank, r in enumerate(ranks):
        for got, p in zip(r[name]["params"], net.parameters()):
            torch.testing.assert_close(got, p.grad, rtol=1e-9, atol=1e-12)
