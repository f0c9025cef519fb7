"""Two CPU processes on the gloo backend: gradients of the partial-label loss are synchronised by
DDP (each rank sees a different label type; both end with the mean gradient).

The ranks meet through a file store in the test's tmp folder, not a TCP port: a port picked free
and released before the ranks bind it can be taken by another process under load (rank 0 then
aborted with "terminate called without an active exception")."""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _net():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    torch.manual_seed(0)
    return PlainConvUNet(1, 3, (4, 8, 16), torch.nn.Conv3d, 3, (1, 2, 2), (1, 1, 1), 15, (1, 1),
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                         nonlin=torch.nn.LeakyReLU, deep_supervision=True)


def _batch(rank):
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(2, 1, 8, 16, 16, generator=g)
    y = torch.randint(0, 15, (2, 1, 8, 16, 16), generator=g)
    annotated = (1, 14) if rank == 0 else (2, 3, 13)
    y = torch.where(torch.isin(y, torch.tensor(annotated)), y, torch.zeros_like(y))
    return x, y, annotated


def _targets(y, outputs):
    return [torch.nn.functional.interpolate(y.float(), size=o.shape[2:], mode="nearest").long()
            for o in outputs]


def _grads(net):
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


def _worker(rank, world, store, out_dir):
    from flareseg.losses.merge_max import PartialLabelLoss
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(minutes=5))
    from flareseg.losses.merge_max import deep_supervision_weights
    # nnU-Net's DDP setting: the lowest scale keeps a tiny weight so no parameter goes unused
    loss_fn = PartialLabelLoss(variant="merge_max", batch_dice=False,
                               ds_weights=deep_supervision_weights(2, last_weight=1e-6))
    x, y, ann = _batch(rank)
    local = _net()
    out = local(x)
    loss_fn(out, _targets(y, out), ann).backward()
    ddp = torch.nn.parallel.DistributedDataParallel(_net())
    out = ddp(x)
    loss_fn(out, _targets(y, out), ann).backward()
    torch.save({"local": _grads(local), "ddp": _grads(ddp.module)}, os.path.join(out_dir, f"r{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_gloo_synchronises_gradients(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "r0.pt"), torch.load(tmp_path / "r1.pt")
    assert not torch.allclose(r0["local"], r1["local"])          # ranks saw different batches/types
    torch.testing.assert_close(r0["ddp"], r1["ddp"])               # synchronised
    torch.testing.assert_close(r0["ddp"], (r0["local"] + r1["local"]) / 2, rtol=1e-4, atol=1e-6)
