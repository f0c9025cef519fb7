"""Gaussian-weighted sliding-window prediction with optional window skipping (pure torch).

The predictor is any callable ``(B, C, pz, py, px) -> (B, K, pz, py, px)``, so the stitching is
testable with a toy function.  Everything stays on the volume's device; accumulators are updated
in place.  Window starts follow nnU-Net's rule (``ceil((size - patch) / (patch * step)) + 1``
evenly spaced starts per axis, rounded), so a network sees the same windows as in stock nnU-Net.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from flareseg.inference.skipping import plan_skipping, planes_to_run

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
#: logit given to non-background classes where no window was predicted (background logit is 0)
UNCOVERED_LOGIT = -20.0


@dataclass(frozen=True)
class Plane:
    """Windows sharing one z start: starts ``ys`` × ``xs`` (voxels), row-major ``(iy, ix)``."""

    z: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)

    def windows(self) -> list[tuple[int, int, int]]:
        return [(self.z, y, x) for y in self.ys for x in self.xs]


@dataclass
class WindowStats:
    windows_total: int = 0
    windows_run: int = 0
    windows_skipped: int = 0
    planes_total: int = 0
    planes_skipped: list[int] = field(default_factory=list)  # z starts of skipped planes

    def as_dict(self) -> dict:
        return {"windows_total": self.windows_total, "windows_run": self.windows_run,
                "windows_skipped": self.windows_skipped, "planes_total": self.planes_total,
                "planes_skipped": len(self.planes_skipped), "skipped_plane_z": list(self.planes_skipped)}


def axis_starts(size: int, patch: int, step_size: float) -> list[int]:
    """Window starts along one axis (``size >= patch``), nnU-Net's spacing rule."""
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch}); pad first")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    n = int(math.ceil((size - patch) / (patch * step_size))) + 1
    if n == 1:
        return [0]
    step = (size - patch) / (n - 1)
    return [int(round(step * i)) for i in range(n)]


def window_grid(shape_zyx: Sequence[int], patch: Sequence[int], step_size: float) -> list[Plane]:
    """Sliding windows over a ``(Z, Y, X)`` volume at least as large as ``patch``, grouped per plane."""
    zs, ys, xs = (axis_starts(int(s), int(p), step_size) for s, p in zip(shape_zyx, patch))
    return [Plane(z, tuple(ys), tuple(xs)) for z in zs]


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1.0 / 8, scale: float = 10.0,
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        truncate: float = 4.0) -> torch.Tensor:
    """``(pz, py, px)`` Gaussian weight centred at ``patch // 2`` with sigma ``patch * sigma_scale``.

    Same map as nnU-Net (a Gaussian filter of a centred delta, truncated at ``truncate`` sigma,
    peak scaled to ``scale``), zeros replaced by the smallest positive value so every voxel of a
    window has weight.  For float16 the map is floored at ``1e-4 * scale`` (normal fp16 range).
    """
    axes = []
    for n in patch:
        sigma = n * sigma_scale
        r = torch.arange(n, dtype=torch.float64) - n // 2
        g = torch.exp(-0.5 * (r / sigma) ** 2)
        g[r.abs() > int(truncate * sigma + 0.5)] = 0
        axes.append(g / g.sum())
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w / w.max() * scale
    if dtype == torch.float16:
        # float16 would hold the far tails as subnormals (or zero) and lose the value of a voxel
        # that only one window covers; 1e-4 of the peak is still negligible next to any centre
        w.clamp_(min=scale * 1e-4)
    w = w.to(device=device, dtype=dtype)
    w[w == 0] = w[w > 0].min()
    return w


def pad_to_patch(volume: torch.Tensor, patch: Sequence[int], value: float = 0.0
                 ) -> tuple[torch.Tensor, tuple[slice, slice, slice]]:
    """Pad ``(C, Z, Y, X)`` symmetrically (extra voxel after) to at least ``patch``; return the crop back."""
    pads, crop = [], []
    for s, p in zip(volume.shape[1:], patch):
        d = max(0, int(p) - int(s))
        pads.append((d // 2, d - d // 2))
        crop.append(slice(d // 2, d // 2 + int(s)))
    if any(a or b for a, b in pads):
        flat = [v for a, b in reversed(pads) for v in (a, b)]
        volume = F.pad(volume, flat, mode="constant", value=value)
    return volume, tuple(crop)  # type: ignore[return-value]


@torch.inference_mode()
def predict_sliding_window(volume: torch.Tensor, predictor: Predictor, patch: Sequence[int],
                           step_size: float = 0.5, batch_windows: int = 4, skip: bool = False,
                           skip_threshold: int = 1, dtype: torch.dtype = torch.float32,
                           return_logits: bool = False, pad_value: float = 0.0,
                           progress: Callable[[int], None] | None = None,
                           ) -> tuple[torch.Tensor, WindowStats]:
    """Predict a ``(C, Z, Y, X)`` volume window by window.

    Returns ``(labels, stats)`` with ``labels`` a ``(Z, Y, X)`` uint8 argmax, or with
    ``return_logits`` the Gaussian-averaged ``(K, Z, Y, X)`` logits (float32).  Voxels covered by
    no predicted window (only possible when ``skip``) are background: label 0, logits
    ``[0, UNCOVERED_LOGIT, ...]``.  ``dtype`` is the accumulator type (float16 halves memory on
    CUDA; use float32 on CPU).  ``progress(n)`` is called after every batch with its window count.
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, Z, Y, X), got shape {tuple(volume.shape)}")
    patch = tuple(int(p) for p in patch)
    padded, crop = pad_to_patch(volume, patch, pad_value)
    planes = window_grid(padded.shape[1:], patch, step_size)
    windows = [w for pl in planes for w in pl.windows()]
    plan = plan_skipping([pl.grid for pl in planes], skip)
    stats = WindowStats(windows_total=len(windows), planes_total=len(planes))

    device = padded.device
    gauss = gaussian_importance(patch, device=device, dtype=dtype)
    weight = torch.zeros(padded.shape[1:], dtype=dtype, device=device)
    acc: list[torch.Tensor] = []  # holds the (K, Z, Y, X) accumulator once K is known

    def run(idx: list[int], count_fg: bool) -> dict[int, int]:
        counted: list[torch.Tensor] = []
        for b in range(0, len(idx), max(1, batch_windows)):
            chunk = idx[b:b + batch_windows]
            sls = [(slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                   for z, y, x in (windows[i] for i in chunk)]
            out = predictor(torch.stack([padded[(slice(None), *s)] for s in sls]))
            if out.ndim != 5 or out.shape[0] != len(chunk) or tuple(out.shape[2:]) != patch:
                raise ValueError(f"predictor returned shape {tuple(out.shape)} for "
                                 f"{len(chunk)} windows of {patch}")
            if not acc:
                acc.append(torch.zeros((out.shape[1], *padded.shape[1:]), dtype=dtype, device=device))
            if count_fg:
                counted.append((out.argmax(1) != 0).flatten(1).sum(1))
            out = out.to(dtype)
            for j, s in enumerate(sls):
                acc[0][(slice(None), *s)].addcmul_(out[j], gauss)
                weight[s].add_(gauss)
            stats.windows_run += len(chunk)
            if progress is not None:
                progress(len(chunk))
        # one device->host transfer for all foreground counts
        return dict(zip(idx, torch.cat(counted).tolist())) if counted else {}

    fg = run(plan.first, count_fg=skip)
    keep = planes_to_run(plan, fg, skip_threshold) if skip \
        else [True] * len(planes)
    rest = [w for k, r in zip(keep, plan.rest_of_plane) if k for w in r]
    for pl, k, r in zip(planes, keep, plan.rest_of_plane):
        if not k:
            stats.planes_skipped.append(pl.z)
            stats.windows_skipped += len(r)
    run(rest, count_fg=False)
    if stats.windows_skipped:
        log.debug("skipped %d of %d windows (%d planes)", stats.windows_skipped,
                  stats.windows_total, len(stats.planes_skipped))

    logits, weight = acc[0][(slice(None), *crop)], weight[crop]
    covered = weight > 0
    if return_logits:
        out = logits.float().div_(weight.float().clamp_min(1e-12))
        if not bool(covered.all()):
            fill = torch.full((out.shape[0],), UNCOVERED_LOGIT, device=device)
            fill[0] = 0
            out[:, ~covered] = fill[:, None]
        return out, stats
    # argmax is invariant to the positive per-voxel weight, so no division is needed
    labels = logits.argmax(0).to(torch.uint8)
    labels.mul_(covered)
    return labels, stats
