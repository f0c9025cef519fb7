"""Resampling that follows stock nnU-Net's rules, on the device (torch), for exact-agreement mode.

Stock nnU-Net resamples the image with order-3 splines and the *logits* linearly back to the input
grid before the argmax.  When either spacing is anisotropic (largest / smallest > 3) and a single
axis is the coarse one, that axis is handled separately with ``order_z`` (0: nearest) and the other
two in-plane.  Here the same rules run in torch: the cubic B-spline is evaluated on the device
(prefilter as a truncated FIR, then the four-tap B-spline weights), and the logits are interpolated only at label boundaries (exact, see
:func:`argmax_of_interpolation`), so no class-score map ever exists at the input resolution.

Shapes are ``(Z, Y, X)`` / ``(K, Z, Y, X)`` in array index space, spacings in mm in the same order;
the half-voxel convention (``align_corners=False``) throughout, as in :mod:`resample`.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
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
    if v.shape[0] != out_shape[axis]:
        v = interpolate_axis(v, 0, axis_samples(v.shape[0], out_shape[axis], order_axis == 0, v.device))
    return v.movedim(0, axis)


@dataclass(frozen=True)
class AxisSamples:
    """Where each output voxel of one axis reads the input: ``(1 - w) * v[i0] + w * v[i1]``.

    ``paired=False`` (nearest or identity axis): ``i1 == i0`` and ``w == 0``, the interpolation cell
    has a single corner on this axis."""

    i0: torch.Tensor
    i1: torch.Tensor
    w: torch.Tensor
    paired: bool

    def __len__(self) -> int:
        return int(self.i0.numel())

    def restrict(self, lo: int, hi: int) -> tuple[slice, "AxisSamples"]:
        """The output voxels that read only inputs ``lo <= i < hi`` (a contiguous run, as the
        samples increase), and their samples relative to ``lo``."""
        idx = torch.nonzero((self.i0 >= lo) & (self.i1 < hi)).view(-1)
        a, b = (int(idx[0]), int(idx[-1]) + 1) if idx.numel() else (0, 0)
        return slice(a, b), AxisSamples(self.i0[a:b] - lo, self.i1[a:b] - lo, self.w[a:b], self.paired)


def axis_samples(n_in: int, n_out: int, nearest: bool, device: torch.device | str) -> AxisSamples:
    """Linear samples (:func:`linear_weights`) of one axis, or nearest ones (identity when equal)."""
    if n_in == n_out or nearest:
        i0 = nearest_indices(n_in, n_out, device) if n_in != n_out else torch.arange(n_out, device=device)
        return AxisSamples(i0, i0, torch.zeros(n_out, device=device), False)
    return AxisSamples(*linear_weights(n_in, n_out, device), True)


def export_samples(in_shape: Sequence[int], out_shape: Sequence[int], axis: int | None = None,
                   order_axis: int = 0, device: torch.device | str = "cpu",
                   nearest: bool = False) -> list[AxisSamples]:
    """Per-axis samples of stock's label export from the model grid ``in_shape`` to the input grid
    ``out_shape``: linear, nearest along ``axis`` when ``order_axis == 0`` (or everywhere with
    ``nearest``)."""
    return [axis_samples(int(i), int(o), nearest or (a == axis and order_axis == 0), device)
            for a, (i, o) in enumerate(zip(in_shape, out_shape))]


def take_nearest(volume: torch.Tensor, samples: Sequence[AxisSamples]) -> torch.Tensor:
    """Gather the ``i0`` corner of every output voxel of a ``(Z, Y, X)`` volume (any dtype)."""
    for a, s in enumerate(samples):
        volume = volume.index_select(a, s.i0)
    return volume


def interpolate_axis(values: torch.Tensor, dim: int, samples: AxisSamples) -> torch.Tensor:
    """Interpolate a float tensor along ``dim`` at ``samples`` (linear, or nearest when unpaired)."""
    lo = values.index_select(dim, samples.i0)
    if samples.paired:
        w = samples.w.to(values.dtype).view(*[-1 if d == dim else 1 for d in range(values.ndim)])
        lo = lo.add_((values.index_select(dim, samples.i1) - lo).mul_(w))
    return lo


def interpolate(values: torch.Tensor, samples: Sequence[AxisSamples]) -> torch.Tensor:
    """Separable interpolation of a float ``(K, Z, Y, X)`` tensor at ``samples`` (all of it: dense)."""
    for a, s in enumerate(samples):
        values = interpolate_axis(values, a + 1, s)
    return values


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


def argmax_of_interpolation(logits: torch.Tensor, samples: Sequence[AxisSamples],
                            chunk_mb: float = 256.0) -> torch.Tensor:
    """Argmax of ``(K, z, y, x)`` logits interpolated at ``samples``: ``(Z, Y, X)`` uint8.

    The class scores are interpolated only where the answer can differ from the coarse argmax.
    An interpolated score vector is a convex combination of its cell's corner vectors, so where
    one class wins at every corner it wins the combination too: such voxels take the coarse label
    directly (a uint8 gather), and only voxels in cells whose corners disagree (label boundaries,
    a few percent of a CT) get their K scores interpolated, ``chunk_mb`` MB at a time.  The result
    is that of interpolating everything (up to float rounding at exact ties), at a fraction of the
    cost and without any full-resolution score map.  ``logits`` may be half precision: only the
    gathered boundary scores are promoted to float32.
    """
    if logits.ndim != 4 or len(samples) != 3:
        raise ValueError(f"expected (K, z, y, x) logits and 3 axes of samples, got {tuple(logits.shape)}")
    k, dev = logits.shape[0], logits.device
    if k > 255:
        raise ValueError(f"at most 255 classes fit a uint8 label map, got {k}")
    out_shape = tuple(len(s) for s in samples)
    out = take_nearest(_uniform_cells(logits.argmax(0).to(torch.uint8), [s.paired for s in samples]), samples)
    todo = torch.nonzero(out.view(-1) == 255).view(-1)
    if not todo.numel():
        return out
    flat = logits.reshape(k, -1)
    strides = (logits.shape[2] * logits.shape[3], logits.shape[3], 1)
    per = max(1, int(chunk_mb * 2 ** 20 // (4 * k * 3)))   # a gathered corner, the sum, one temp
    dst = out.view(-1)
    corners = list(itertools.product(*[(0, 1) if s.paired else (0,) for s in samples]))
    for a in range(0, todo.numel(), per):
        idx = todo[a:a + per]
        pos = (idx // (out_shape[1] * out_shape[2]), idx // out_shape[2] % out_shape[1], idx % out_shape[2])
        axes = [(s.i0[p], s.i1[p], s.w[p]) for s, p in zip(samples, pos)]
        acc = None
        for corner in corners:
            lin = torch.zeros_like(idx)
            wgt = torch.ones(idx.numel(), device=dev)
            for c, st, (j0, j1, w) in zip(corner, strides, axes):
                lin += (j1 if c else j0) * st
                wgt = wgt * (w if c else 1 - w)
            term = flat[:, lin].float().mul_(wgt)
            acc = term if acc is None else acc.add_(term)
        dst[idx] = acc.argmax(0).to(torch.uint8)
    return out
