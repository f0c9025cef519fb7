"""Resampling that follows stock nnU-Net's rules, on the device (torch), for exact-agreement mode.

Stock nnU-Net resamples the image with order-3 splines and the *logits* linearly back to the input
grid before the argmax.  When either spacing is anisotropic (largest / smallest > 3) and a single
axis is the coarse one, that axis is handled separately with ``order_z`` (0: nearest) and the other
two in-plane.  Here the same rules run in torch: the cubic B-spline is evaluated on the device
(prefilter as a truncated FIR, then the four-tap B-spline weights), and the logits are interpolated only at label boundaries (exact, see
:func:`upsample_logits_argmax`), so no class-score map ever exists at the input resolution.

Shapes are ``(Z, Y, X)`` / ``(K, Z, Y, X)`` in array index space, spacings in mm in the same order;
the half-voxel convention (``align_corners=False``) throughout, as in :mod:`resample`.
"""
from __future__ import annotations

import functools
import itertools
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


#: pole of the cubic B-spline prefilter; its impulse response is ``sqrt(3) * POLE ** |n|``
_POLE = math.sqrt(3.0) - 2.0
#: prefilter taps kept on each side: the first dropped one weighs ``|POLE| ** 13 < 4e-8``
_PREFILTER_HALF = 12


@functools.lru_cache(maxsize=64)
def bspline_matrix(n: int, n_out: int) -> torch.Tensor:
    """``(n_out, n)`` float64 matrix of cubic B-spline resampling of ``n`` samples to ``n_out``.

    What ``scipy.ndimage.zoom(order=3, mode="nearest", grid_mode=True)`` (scikit-image's
    ``resize(order=3, mode="edge")``, nnU-Net's image resampler) does along one axis, as one linear
    map: the data, edge-extended, are turned into B-spline coefficients by the inverse B-spline
    filter (its impulse response truncated to ``2 * _PREFILTER_HALF + 1`` taps), which are then
    evaluated at the half-voxel-convention positions with the four cubic B-spline weights.  Built
    by passing the identity through that filter and evaluation (column ``j`` is the response to
    sample ``j``); applying it is one matrix product per axis, cheap on any device.
    """
    half, ext = _PREFILTER_HALF, _PREFILTER_HALF + 2          # 2 more for the evaluation taps
    x = F.pad(torch.eye(n, dtype=torch.float64)[:, None], (half + ext, half + ext), mode="replicate")
    k = torch.arange(-half, half + 1, dtype=torch.float64)
    coef = F.conv1d(x, (math.sqrt(3.0) * _POLE ** k.abs()).view(1, 1, -1))[:, 0]  # indices -ext..n-1+ext
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n / n_out) - 0.5
    i = src.floor()
    t = src - i
    i = i.long() + ext
    weights = ((1 - t) ** 3 / 6, (3 * t ** 3 - 6 * t ** 2 + 4) / 6,
               (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6, t ** 3 / 6)
    return sum(coef.index_select(1, i + j) * w for j, w in zip(range(-1, 3), weights)).T.contiguous()


def _bspline_along(v: torch.Tensor, axis: int, n_out: int) -> torch.Tensor:
    """Cubic B-spline interpolation of float ``v`` along ``axis`` to ``n_out`` samples (:func:`bspline_matrix`)."""
    n = v.shape[axis]
    if n == n_out:
        return v
    m = bspline_matrix(n, n_out).to(device=v.device, dtype=v.dtype)
    return torch.matmul(v.movedim(axis, -1), m.T).movedim(-1, axis)


def resample_image_bspline(volume: torch.Tensor, out_shape: Sequence[int], axis: int | None = None,
                         order_axis: int = 0) -> torch.Tensor:
    """Cubic B-spline resampling of a float ``(Z, Y, X)`` tensor to ``out_shape``, as nnU-Net does it.

    ``axis`` (from :func:`separate_axis`) is resampled on its own, nearest when ``order_axis == 0``
    and linear otherwise, after the other two axes are resampled slice by slice and each slice is
    clipped to its own value range; with ``axis=None`` all three axes are B-spline interpolated and
    the result is clipped to the volume's range (scikit-image ``resize(clip=True)``).
    """
    out_shape = tuple(int(s) for s in out_shape)
    if tuple(volume.shape) == out_shape:
        return volume
    if axis is None:
        v = volume
        for a in range(3):
            v = _bspline_along(v, a, out_shape[a])
        return v.clamp_(volume.min(), volume.max())
    v = volume.movedim(axis, 0)
    rest = [s for i, s in enumerate(out_shape) if i != axis]
    lo, hi = v.amin((1, 2)).view(-1, 1, 1), v.amax((1, 2)).view(-1, 1, 1)
    v = torch.minimum(torch.maximum(_bspline_along(_bspline_along(v, 1, rest[0]), 2, rest[1]), lo), hi)
    return _along_first(v, out_shape[axis], nearest=order_axis == 0).movedim(0, axis)


def _axis_samples(n_in: int, n_out: int, nearest: bool, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """``(i0, i1, w, paired)`` of one axis: linear samples (:func:`linear_weights`), or nearest /
    identity ones (``i1 = i0``, ``w = 0``, ``paired=False``: the cell has one corner on this axis)."""
    if n_in == n_out or nearest:
        i0 = nearest_indices(n_in, n_out, device) if n_in != n_out else torch.arange(n_out, device=device)
        return i0, i0, torch.zeros(n_out, device=device), False
    return (*linear_weights(n_in, n_out, device), True)


def _uniform_cells(labels: torch.Tensor, paired: Sequence[bool]) -> torch.Tensor:
    """Label of every interpolation cell whose corners all share it, 255 where they differ.

    Cell ``(i, j, k)`` spans corners ``i..i+1`` on each paired axis (the last index repeated at the
    far edge, as the interpolation clamps ``i1``)."""
    lo, hi = labels.clone(), labels.clone()
    for ax, p in enumerate(paired):
        if not p or labels.shape[ax] == 1:
            continue
        n = labels.shape[ax]
        nxt = torch.cat([torch.arange(1, n, device=labels.device), torch.tensor([n - 1], device=labels.device)])
        lo = torch.minimum(lo, lo.index_select(ax, nxt))
        hi = torch.maximum(hi, hi.index_select(ax, nxt))
    return torch.where(lo == hi, lo, torch.full_like(lo, 255))


def upsample_logits_argmax(logits: torch.Tensor, out_shape: Sequence[int], axis: int | None = None,
                           order_axis: int = 0, chunk_mb: float = 256.0) -> torch.Tensor:
    """Argmax of ``(K, z, y, x)`` logits resampled linearly to ``out_shape``: ``(Z, Y, X)`` uint8.

    ``axis`` (from :func:`separate_axis`) is resampled nearest when ``order_axis == 0``; otherwise
    the interpolation is trilinear (``F.interpolate``'s sample positions).

    The class scores are interpolated only where the answer can differ from the coarse argmax.
    An interpolated score vector is a convex combination of its cell's corner vectors, so where
    one class wins at every corner it wins the combination too: such voxels take the coarse label
    directly (a uint8 gather), and only voxels in cells whose corners disagree (label boundaries,
    a few percent of a CT) get their K scores interpolated, ``chunk_mb`` MB at a time.  The result
    is that of interpolating everything (up to float rounding at exact ties), at a fraction of the
    cost and without any full-resolution score map.
    """
    out_shape = tuple(int(s) for s in out_shape)
    if len(out_shape) != 3 or logits.ndim != 4:
        raise ValueError(f"expected (K, z, y, x) logits and a 3-D shape, got {tuple(logits.shape)} -> {out_shape}")
    lg = logits  # any float dtype: only the gathered boundary scores are promoted to float32
    k, dev = lg.shape[0], lg.device
    if k > 255:
        raise ValueError(f"at most 255 classes fit a uint8 label map, got {k}")
    samples = [_axis_samples(lg.shape[1 + a], out_shape[a], a == axis and order_axis == 0, dev) for a in range(3)]
    cells = _uniform_cells(lg.argmax(0).to(torch.uint8), [s[3] for s in samples])
    out = cells
    for a, (i0, _, _, _) in enumerate(samples):
        out = out.index_select(a, i0)
    todo = torch.nonzero(out.view(-1) == 255).view(-1)
    if todo.numel():
        flat = lg.reshape(k, -1)
        strides = (lg.shape[2] * lg.shape[3], lg.shape[3], 1)
        per = max(1, int(chunk_mb * 2 ** 20 // (4 * k * 3)))   # a gathered corner, the sum, one temp
        dst = out.view(-1)
        for a in range(0, todo.numel(), per):
            idx = todo[a:a + per]
            pos = (idx // (out_shape[1] * out_shape[2]), idx // out_shape[2] % out_shape[1], idx % out_shape[2])
            axes = [(s[0][p], s[1][p], s[2][p]) for s, p in zip(samples, pos)]
            acc = None
            for corner in itertools.product(*[(0, 1) if s[3] else (0,) for s in samples]):
                lin = torch.zeros_like(idx)
                wgt = torch.ones(idx.numel(), device=dev)
                for c, st, (j0, j1, w) in zip(corner, strides, axes):
                    lin += (j1 if c else j0) * st
                    wgt = wgt * (w if c else 1 - w)
                term = flat[:, lin].float().mul_(wgt)
                acc = term if acc is None else acc.add_(term)
            dst[idx] = acc.argmax(0).to(torch.uint8)
    return out
