"""nnU-Net-style soft Dice on probabilities (pure torch).

Same definition as nnU-Net v2's ``MemoryEfficientSoftDiceLoss``: per class
``(2 * sum(p * g) + smooth) / (sum(g) + sum(p) + smooth)``, sums over the spatial axes (and the
batch when ``batch_dice``), averaged over the foreground classes (channel 0 left out unless
``do_bg``), and returned negated, so the loss lies in ``[-1, 0]``.
"""
from __future__ import annotations

import torch


class _AllReduceSum(torch.autograd.Function):
    """Sum over DDP ranks.  Every rank's loss depends on the sum, so the gradient of each rank's
    share is the sum of all ranks' incoming gradients (another all-reduce)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the DDP ranks (every rank must call with the same shape), differentiable."""
    return _AllReduceSum.apply(x)


def dice_statistics(probs: torch.Tensor, target: torch.Tensor, dtype: torch.dtype | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample and foreground channel ``1..C-1``: ``(intersect, sum_pred, sum_gt)``, each ``(B, C-1)``.

    ``probs``: ``(B, C, *spatial)`` probabilities; ``target``: ``(B, *spatial)`` or ``(B, 1, *spatial)``
    integer map in ``0..C-1``.  Sums in ``dtype`` (default: ``probs``' dtype promoted to at least float32).
    """
    if target.ndim == probs.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape[1] != 1 or target.shape[2:] != probs.shape[2:] or target.shape[0] != probs.shape[0]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match probabilities {tuple(probs.shape)}")
    dtype = dtype or torch.promote_types(probs.dtype, torch.float32)
    axes = tuple(range(2, probs.ndim))
    with torch.no_grad():
        onehot = torch.zeros(probs.shape, device=probs.device, dtype=dtype)
        onehot.scatter_(1, target.long(), 1)
        onehot = onehot[:, 1:]
        sum_gt = onehot.sum(axes)
    fg = probs[:, 1:]
    return (fg * onehot).sum(axes, dtype=dtype), fg.sum(axes, dtype=dtype), sum_gt


def soft_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    batch_dice: bool = False,
    do_bg: bool = False,
    smooth: float = 1e-5,
    ddp: bool = False,
) -> torch.Tensor:
    """Negative mean soft Dice.

    ``probs``: ``(B, C, *spatial)`` probabilities (softmax already applied).
    ``target``: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer class map with values in ``0..C-1``.
    ``ddp``: with ``batch_dice``, also sum the statistics over all DDP ranks (every rank must then
    call with the same channels in the same order; :meth:`PartialLabelLoss.pooled` guarantees it).  Returns a scalar tensor in ``[-1, 0]``.
    """
    if target.ndim == probs.ndim - 1:
        target = target.unsqueeze(1)
    if target.shape[1] != 1 or target.shape[2:] != probs.shape[2:] or target.shape[0] != probs.shape[0]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match probabilities {tuple(probs.shape)}")
    axes = tuple(range(2, probs.ndim))
    dtype = torch.promote_types(probs.dtype, torch.float32)   # float32 for AMP's fp16/bf16, float64 kept
    with torch.no_grad():
        onehot = torch.zeros(probs.shape, device=probs.device, dtype=dtype)
        onehot.scatter_(1, target.long(), 1)
        if not do_bg:
            onehot = onehot[:, 1:]
        sum_gt = onehot.sum(axes)
    if not do_bg:
        probs = probs[:, 1:]
    intersect = (probs * onehot).sum(axes, dtype=dtype)
    sum_pred = probs.sum(axes, dtype=dtype)
    if batch_dice:
        if ddp:
            intersect, sum_pred, sum_gt = (_AllReduceSum.apply(t.sum(0)) for t in (intersect, sum_pred, sum_gt))
        else:
            intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dc = (2 * intersect + smooth) / (sum_gt + sum_pred + smooth).clamp_min(1e-8)
    return -dc.mean()
