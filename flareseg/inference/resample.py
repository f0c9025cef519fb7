"""On-device resampling in array index space (torch): images trilinear, nearest-neighbour indices.

Shapes are ``(Z, Y, X)`` (or ``(C, Z, Y, X)``), spacings ``(z, y, x)`` mm in the same axis order.
Both use the half-voxel convention (``align_corners=False``): voxel ``i`` of an axis with ``n``
voxels spans ``[i, i+1) * extent / n``, so the first and last voxel *edges* line up, as in
nnU-Net's (scikit-image) resampling and as the physical extent is preserved.  Trilinear image
resampling is the predictor's ``image_resampling="linear"`` option; the default reproduces
nnU-Net's order-3 spline (:mod:`flareseg.inference.stock_resampling`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def target_shape(shape_zyx: Sequence[int], spacing_zyx: Sequence[float],
                 target_spacing_zyx: Sequence[float]) -> tuple[int, int, int]:
    """Array size after resampling: ``round(shape * spacing / target)`` per axis (nnU-Net's rule), at least 1."""
    return tuple(max(1, int(round(s * sp / t)))  # type: ignore[return-value]
                 for s, sp, t in zip(shape_zyx, spacing_zyx, target_spacing_zyx))


def resample_image(volume: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of a float ``(C, Z, Y, X)`` (or ``(Z, Y, X)``) tensor to ``out_shape``."""
    squeeze = volume.ndim == 3
    v = volume[None, None] if squeeze else volume[None]
    out_shape = tuple(int(s) for s in out_shape)
    if tuple(v.shape[2:]) != out_shape:
        v = F.interpolate(v, size=out_shape, mode="trilinear", align_corners=False)
    return v[0, 0] if squeeze else v[0]


def nearest_indices(n_in: int, n_out: int, device: torch.device | str) -> torch.Tensor:
    """Source index of each output voxel along one axis (half-voxel centres, clamped)."""
    idx = torch.floor((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out))
    return idx.long().clamp_(0, n_in - 1)
