"""``deep_supervision: false`` under DDP (issue 26, item 9): nnU-Net's decoder keeps segmentation
heads it does not use then; a plain DDP wrapper fails on the next step waiting for their
gradients.  :func:`ddp_wrap` freezes them; two gloo ranks train three steps and end with the same
weights.  File store in tmp_path (no port)."""
from __future__ import annotations

import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _net(deep_supervision: bool):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    torch.manual_seed(0)
    return PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv3d, 3, (1, 2, 2), (1, 1, 1), 15, (1, 1),
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                         nonlin=torch.nn.LeakyReLU, deep_supervision=deep_supervision)


def _train(model, rank: int, steps: int = 3) -> str:
    from flareseg.losses.merge_max import PartialLabelLoss
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = PartialLabelLoss("merge_max", batch_dice=True, ddp=True)
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        x = torch.randn(1, 1, 8, 16, 16, generator=g)
        y = torch.randint(0, 15, (1, 1, 8, 16, 16), generator=g)
        opt.zero_grad()
        loss_fn(model(x), y, [(1, 14)] if rank == 0 else [(2, 3)]).backward()
        opt.step()
    return "".join(f"{float(p.sum()):.10e}" for p in model.parameters())


def _worker(rank, store, out_dir):
    from flareseg.nnunet.trainer import ddp_wrap, unused_seg_layers
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    res = {"unused": len(unused_seg_layers(_net(False))), "unused_ds": len(unused_seg_layers(_net(True)))}
    res["weights"] = _train(ddp_wrap(_net(False), torch.device("cpu"), deep_supervision=False), rank)
    try:   # the defect: a plain wrapper
        _train(torch.nn.parallel.DistributedDataParallel(_net(False)), rank)
        res["plain"] = "ok"
    except RuntimeError as e:
        res["plain"] = str(e).splitlines()[0]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


def test_ddp_without_deep_supervision_trains_and_stays_in_sync(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["unused"] == 1 and r0["unused_ds"] == 0    # 2 resolutions: 1 head unused without DS
    assert r0["weights"] == r1["weights"]                  # trained 3 steps, synchronised
    assert "finished reduction" in r0["plain"]             # what the plain wrapper does
