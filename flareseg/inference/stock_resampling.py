"""Resampling that follows stock nnU-Net's rules, on the device (torch), for exact-agreement mode.

Stock nnU-Net resamples the image with order-3 splines and the *logits* linearly back to the input
grid before the argmax.  When either spacing is anisotropic (largest / smallest > 3) and a single
axis is the coarse one, that axis is handled separately with ``order_z`` (0: nearest) and the other
two in-plane.  Here the same rules run in torch: cubic convolution (``bicubic``, applied separably)
stands in for the spline, and the logits are upsampled in slabs along the first (or separate) axis
so that at most ``slab_mb`` of class scores exist at the input resolution at any time.

Shapes are ``(Z, Y, X)`` / ``(K, Z, Y, X)`` in array index space, spacings in mm in the same order;
the half-voxel convention (``align_corners=False``) throughout, as in :mod:`resample`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from flareseg.inference.resample import nearest_indices

#: nnU-Net's ANISO_THRESHOLD: spacing ratio above which the coarse axis is resampled separately
ANISO_THRESHOLD = 3.0


def _coarse_axes(spacing: Sequence[float]) -> list[int]:
    top = max(spacing)
    return [i for i, s in enumerate(spacing) if s == top]


def separate_axis(current_spacing: Sequence[float], new_spacing: Sequence[float],
                  force: bool | None = None, threshold: float = ANISO_THRESHOLD) -> int | None:
    """The axis stock nnU-Net resamples on its own (with ``order_z``), or ``None``.

    ``force=None`` decides from anisotropy of the current, then the new spacing; ``True`` takes the
    coarse axis of the current spacing; ``False`` never separates.  Two or three equally coarse
    axes mean no separate axis (nnU-Net's rule).
    """
    if force is False:
        return None
    if force:
        axes = _coarse_axes(current_spacing)
    elif max(current_spacing) / min(current_spacing) > threshold:
        axes = _coarse_axes(current_spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axes = _coarse_axes(new_spacing)
    else:
        return None
    return axes[0] if len(axes) == 1 else None


def linear_weights(n_in: int, n_out: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i0, i1, w)`` per output voxel of one axis: value = ``(1 - w) * v[i0] + w * v[i1]``.

    Same sample positions as ``F.interpolate(..., mode="linear", align_corners=False)``.
    """
    src = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, (src - i0).float()


def _along_first(v: torch.Tensor, n_out: int, nearest: bool) -> torch.Tensor:
    """Resample ``(n, ...)`` along dim 0 to ``n_out`` (nearest or linear)."""
    n_in = v.shape[0]
    if n_in == n_out:
        return v
    if nearest:
        return v.index_select(0, nearest_indices(n_in, n_out, v.device))
    i0, i1, w = linear_weights(n_in, n_out, v.device)
    lo = v.index_select(0, i0)
    return lo.add_((v.index_select(0, i1) - lo).mul_(w.view(-1, *[1] * (v.ndim - 1))))


def _plane(v: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resample the last two dims of ``(N, C, H, W)`` to ``size`` (identity when equal)."""
    size = tuple(int(s) for s in size)
    if tuple(v.shape[-2:]) == size:
        return v
    return F.interpolate(v, size=size, mode=mode, align_corners=False)


def resample_image_cubic(volume: torch.Tensor, out_shape: Sequence[int], axis: int | None = None,
                         order_axis: int = 0) -> torch.Tensor:
    """Cubic resampling of a float ``(Z, Y, X)`` tensor to ``out_shape``.

    ``axis`` (from :func:`separate_axis`) is resampled on its own, nearest when ``order_axis == 0``
    and linear otherwise, the other two axes bicubic; with ``axis=None`` all three are cubic
    (separable: the first axis on ``(first, second)`` planes, then the last two).
    """
    out_shape = tuple(int(s) for s in out_shape)
    if tuple(volume.shape) == out_shape:
        return volume
    if axis is not None:
        v = volume.movedim(axis, 0)
        rest = [s for i, s in enumerate(out_shape) if i != axis]
        v = _along_first(v, out_shape[axis], nearest=order_axis == 0)
        return _plane(v[:, None], rest, "bicubic")[:, 0].movedim(0, axis)
    # first axis: bicubic on (axis 0, axis 1) planes with axis 1 kept (cubic at integer positions = identity)
    v = volume.permute(2, 0, 1)[:, None]
    v = _plane(v, (out_shape[0], volume.shape[1]), "bicubic")[:, 0].permute(1, 2, 0)
    return _plane(v[:, None], out_shape[1:], "bicubic")[:, 0]


def upsample_logits_argmax(logits: torch.Tensor, out_shape: Sequence[int], axis: int | None = None,
                           order_axis: int = 0, slab_mb: float = 256.0) -> torch.Tensor:
    """Argmax of ``(K, z, y, x)`` logits resampled linearly to ``out_shape``: ``(Z, Y, X)`` uint8.

    ``axis`` (from :func:`separate_axis`) is resampled nearest when ``order_axis == 0``; otherwise
    the interpolation is trilinear.  Output slabs along ``axis`` (or the first axis) are done one
    at a time, so at most ``slab_mb`` MB of float32 class scores exist at the output resolution.
    """
    out_shape = tuple(int(s) for s in out_shape)
    first = 0 if axis is None else axis
    lg = logits.float().movedim(first + 1, 1)                      # (K, n_first, a, b)
    plane = tuple(s for i, s in enumerate(out_shape) if i != first)
    n_out = out_shape[first]
    nearest = axis is not None and order_axis == 0
    if nearest:
        i0 = i1 = nearest_indices(lg.shape[1], n_out, lg.device)
        w = torch.zeros(n_out, device=lg.device)
    else:
        i0, i1, w = linear_weights(lg.shape[1], n_out, lg.device)
    out = torch.empty((n_out, *plane), dtype=torch.uint8, device=lg.device)
    per = max(1, int(slab_mb * 2 ** 20 // (4 * lg.shape[0] * math.prod(plane))))
    for a in range(0, n_out, per):
        b = min(n_out, a + per)
        lo = lg.index_select(1, i0[a:b])
        if not nearest:
            lo = lo.add_((lg.index_select(1, i1[a:b]) - lo).mul_(w[a:b].view(1, -1, 1, 1)))
        out[a:b] = _plane(lo.transpose(0, 1), plane, "bilinear").argmax(1)
    return out.movedim(0, first)
