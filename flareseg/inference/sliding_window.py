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

import numpy as np
import torch
import torch.nn.functional as F

from flareseg.inference.skipping import (CellGrid, plan_skipping, planes_to_grow, planes_to_run,
                                         record_foreground)

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
    planes_grown: list[int] = field(default_factory=list)    # z starts of planes run by growth, in order
    indicator_foreground: list[int] = field(default_factory=list)  # per plane: its indicators' foreground voxels

    def as_dict(self) -> dict:
        return {"windows_total": self.windows_total, "windows_run": self.windows_run,
                "windows_skipped": self.windows_skipped, "planes_total": self.planes_total,
                "planes_skipped": len(self.planes_skipped), "skipped_plane_z": list(self.planes_skipped),
                "planes_grown": len(self.planes_grown), "grown_plane_z": list(self.planes_grown),
                "indicator_foreground": list(self.indicator_foreground)}


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


def windows_covering(shape_zyx: Sequence[int], patch: Sequence[int], step_size: float,
                     box: Sequence[slice]) -> tuple[tuple[slice, slice, slice], list[list[int]]]:
    """Stock's window grid over the whole ``shape_zyx``, reduced to the windows that meet ``box``.

    Returns the region those windows cover and their starts relative to it (for
    :func:`predict_sliding_window`'s ``starts``): the windows a network runs on the region are
    windows stock nnU-Net runs on the whole volume, so their predictions are stock's.  An axis no
    longer than the patch is kept whole (it is padded like stock's)."""
    region, starts = [], []
    for n, p, b in zip((int(s) for s in shape_zyx), (int(p) for p in patch), box):
        if n <= p:
            region.append(slice(0, n))
            starts.append([0])
            continue
        lo, hi = max(0, int(b.start)), min(n, int(b.stop))
        every = axis_starts(n, p, step_size)
        keep = [s for s in every if s < hi and s + p > lo] or [min(every, key=lambda s: abs(s + p / 2 - (lo + hi) / 2))]
        region.append(slice(keep[0], keep[-1] + p))
        starts.append([s - keep[0] for s in keep])
    return tuple(region), starts  # type: ignore[return-value]


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1.0 / 8, scale: float = 10.0,
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        truncate: float = 4.0) -> torch.Tensor:
    """``(pz, py, px)`` Gaussian weight centred at ``patch // 2`` with sigma ``patch * sigma_scale``.

    Stock nnU-Net's map (``compute_gaussian``: a Gaussian filter of a centred delta, truncated at
    ``truncate`` sigma, peak scaled to ``scale``, computed in float64), converted to ``dtype``, then
    zeros (float16 underflow of the far tails) replaced by the smallest non-zero value, as stock
    does: in float16 that value is subnormal, exactly like stock's weights.
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
    w = w.to(device=device, dtype=dtype)
    w[w == 0] = w[w > 0].min()
    return w


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sum type of the sliding window for a network ``dtype``: float16 sums in float16 as stock
    nnU-Net does (so its labels are stock's); bfloat16's 8-bit mantissa would lose the sums (stock
    has no bfloat16 path), so it sums in float32 like float32."""
    return torch.float16 if dtype == torch.float16 else torch.float32


def foreground_cell_corners(fg_mask: torch.Tensor, cuts: Sequence[Sequence[Sequence[int]]]
                            ) -> list[torch.Tensor]:
    """Per window, the integral image of its foreground mask ``(B, pz, py, px)`` sampled at its cuts.

    ``cuts[b]`` are window ``b``'s cut positions per axis (``0 ... patch``); the result for ``b``
    has shape ``(len(cz), len(cy), len(cx))`` and :func:`cell_counts` turns it into per-cell counts.
    """
    b, pz, py, px = fg_mask.shape
    integ = torch.zeros((b, pz + 1, py + 1, px + 1), dtype=torch.int32, device=fg_mask.device)
    integ[:, 1:, 1:, 1:] = (fg_mask.to(torch.int32).cumsum(1, dtype=torch.int32)
                            .cumsum(2, dtype=torch.int32).cumsum(3, dtype=torch.int32))
    out = []
    for j, (cz, cy, cx) in enumerate(cuts):
        iz, iy, ix = (torch.as_tensor(c, device=fg_mask.device) for c in (cz, cy, cx))
        out.append(integ[j][iz[:, None, None], iy[None, :, None], ix[None, None, :]])
    return out


def cell_counts(corners: np.ndarray) -> np.ndarray:
    """Integral-image corners ``(nz+1, ny+1, nx+1)`` -> voxel counts per cell ``(nz, ny, nx)``."""
    return np.diff(np.diff(np.diff(corners, axis=0), axis=1), axis=2)


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


def host_fallback(device: torch.device) -> torch.device | None:
    """Where the sums go when ``device`` runs out of memory: the host for an accelerator, ``None``
    (no fallback) when they already are on the host."""
    return None if torch.device(device).type == "cpu" else torch.device("cpu")


def _release(device: torch.device) -> None:
    """Return the failed attempt's cached blocks to the device (CUDA's cache)."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


@torch.inference_mode()
def predict_sliding_window(volume: torch.Tensor, predictor: Predictor, patch: Sequence[int],
                           step_size: float = 0.5, batch_windows: int = 4, skip: bool = False,
                           skip_threshold: int = 1, dtype: torch.dtype = torch.float32,
                           return_logits: bool = False, pad_value: float = 0.0,
                           progress: Callable[[int], None] | None = None, *, grow: bool = True,
                           starts: Sequence[Sequence[int]] | None = None,
                           pad_batch: bool | None = None,
                           windows_done: Callable[[int, int], None] | None = None,
                           acc_device: torch.device | str | None = None,
                           ) -> tuple[torch.Tensor, WindowStats]:
    """Predict a ``(C, Z, Y, X)`` volume window by window.

    Returns ``(labels, stats)`` with ``labels`` a ``(Z, Y, X)`` uint8 argmax, or with
    ``return_logits`` the Gaussian-averaged ``(K, Z, Y, X)`` logits (in
    :func:`accumulator_dtype` of ``dtype``).  Voxels covered by no predicted window (only possible
    when ``skip``) are background: label 0, logits ``[0, UNCOVERED_LOGIT, ...]``.

    ``dtype`` is the network's precision: with float16 the sums are stock nnU-Net's, operation for
    operation (its float16 Gaussian, each window's logits times the Gaussian in the network output's
    type, added to float16 logit and weight sums in window order, divided in float16), so with
    ``skip=False`` the logits and labels are bit-identical to stock's for the same window logits;
    if the float16 result holds an inf (stock's check), the volume is predicted again in float32
    (stock would abort), with a warning.  bfloat16 and float32 sum in float32.
    ``progress(n)`` is called after every batch with its window count; ``windows_done(done, total)``
    once before the first batch with ``(0, total)`` and after every batch with the windows run so
    far and the grid's window count (windows that skipping leaves out are never run, so with
    ``skip`` a volume can end with ``done < total``).
    ``pad_batch`` (default: on CUDA) pads the last batch of a pass to ``batch_windows`` windows, so
    the network sees one batch shape (a fresh process's cuDNN autotuning then runs once, not per
    shape); the padding windows' outputs are dropped, the labels do not change.
    With ``skip``, ``grow`` (default) also runs every skipped plane whose not-run windows touch
    foreground that run windows predicted, to a fixed point (see :mod:`flareseg.inference.skipping`).
    ``starts`` (per axis, in the padded volume) replaces nnU-Net's window starts, e.g. the part of
    a larger volume's grid from :func:`windows_covering`; they must cover the volume.
    ``acc_device``: where the sums (and the result) live; default the volume's device.  When that
    runs out of memory (``torch.OutOfMemoryError``, in the network or the sums) and it is not the
    host, the volume is predicted again with the sums on the host (the network stays on the
    device), with one WARNING, as stock nnU-Net falls back; the result is then on the host.
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, Z, Y, X), got shape {tuple(volume.shape)}")
    if acc_device is None:
        args = {k: v for k, v in locals().items() if k != "acc_device"}
        host = host_fallback(volume.device)
        try:
            return predict_sliding_window(**args, acc_device=volume.device)
        except torch.OutOfMemoryError as e:
            if host is None:
                raise
            why = (str(e).splitlines() or [""])[0][:200]
        # outside the except clause: the failed attempt's frames (and its device tensors) are freed
        log.warning("out of memory on %s in the sliding window (%s); predicting this volume again with "
                    "the sums on the host (slower; the network stays on %s)", volume.device, why, volume.device)
        _release(volume.device)
        return predict_sliding_window(**args, acc_device=host)
    acc_device = torch.device(acc_device)
    patch = tuple(int(p) for p in patch)
    padded, crop = pad_to_patch(volume, patch, pad_value)
    if starts is None:
        planes = window_grid(padded.shape[1:], patch, step_size)
    else:
        for ax, (st, p, n) in enumerate(zip(starts, patch, padded.shape[1:])):
            if not st or min(st) != 0 or max(st) + p != n or any(b - a > p for a, b in zip(st, st[1:])):
                raise ValueError(f"window starts {list(st)} along axis {ax} do not cover {n} voxels "
                                 f"with patch {p}")
        planes = [Plane(int(z), tuple(int(y) for y in starts[1]), tuple(int(x) for x in starts[2]))
                  for z in starts[0]]
    windows = [w for pl in planes for w in pl.windows()]
    plan = plan_skipping([pl.grid for pl in planes], skip)
    cells = CellGrid.of(([pl.z for pl in planes], planes[0].ys, planes[0].xs), patch, padded.shape[1:])
    fg_cells = np.zeros(cells.shape, dtype=np.int64)  # most foreground any run window saw per cell
    stats = WindowStats(windows_total=len(windows), planes_total=len(planes))
    if windows_done is not None:
        windows_done(0, len(windows))

    device = acc_device
    acc_dtype = accumulator_dtype(dtype)
    pad_batch = padded.device.type == "cuda" if pad_batch is None else pad_batch
    batch_windows = max(1, batch_windows)
    gauss = gaussian_importance(patch, device=device, dtype=acc_dtype)
    weight = torch.zeros(padded.shape[1:], dtype=acc_dtype, device=device)
    acc: list[torch.Tensor] = []  # holds the (K, Z, Y, X) accumulator once K is known

    def run(idx: list[int], count_fg: bool) -> dict[int, int]:
        """Predict windows ``idx``; with ``count_fg`` record their foreground and return it per window."""
        counted: list[torch.Tensor] = []
        for b in range(0, len(idx), batch_windows):
            chunk = idx[b:b + batch_windows]
            sls = [(slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                   for z, y, x in (windows[i] for i in chunk)]
            batch = torch.stack([padded[(slice(None), *s)] for s in sls])
            n_pad = batch_windows - len(chunk) if pad_batch else 0
            if n_pad:
                batch = torch.cat([batch, batch.new_zeros((n_pad, *batch.shape[1:]))])
            out = predictor(batch)
            if out.ndim != 5 or out.shape[0] != len(batch) or tuple(out.shape[2:]) != patch:
                raise ValueError(f"predictor returned shape {tuple(out.shape)} for "
                                 f"{len(batch)} windows of {patch}")
            out = out[:len(chunk)]
            if not acc:
                acc.append(torch.zeros((out.shape[1], *padded.shape[1:]), dtype=acc_dtype, device=device))
            if count_fg:
                # argmax != 0 (ties go to background), without a slow channel-wise argmax on CPU
                fg_mask = out[:, 1:].amax(1) > out[:, 0] if out.shape[1] > 1 \
                    else torch.zeros_like(out[:, 0], dtype=torch.bool)
                counted.extend(foreground_cell_corners(
                    fg_mask, [cells.window_cuts(windows[i]) for i in chunk]))
            if out.device != device:   # sums on the host (out-of-memory fallback)
                out = out.to(device)
            if acc_dtype != torch.float16:
                out = out.float()
            # stock's order of operations: logits x Gaussian in the logits' type (float16 under
            # CUDA autocast, float32 on the CPU), then added to the sums window by window
            out = out * gauss
            for j, s in enumerate(sls):
                acc[0][(slice(None), *s)] += out[j]
                weight[s] += gauss
            stats.windows_run += len(chunk)
            if progress is not None:
                progress(len(chunk))
            if windows_done is not None:
                windows_done(stats.windows_run, stats.windows_total)
        if not counted:
            return {}
        # one device->host transfer for all foreground counts
        flat = torch.cat([c.flatten() for c in counted]).cpu().numpy()
        fg, o = {}, 0
        for i, c in zip(idx, counted):
            counts = cell_counts(flat[o:o + c.numel()].reshape(c.shape))
            o += c.numel()
            record_foreground(fg_cells, cells.cells(windows[i]), counts)
            fg[i] = int(counts.sum())
        return fg

    grow = skip and grow
    fg = run(plan.first, count_fg=skip)
    keep = planes_to_run(plan, fg, skip_threshold) if skip else [True] * len(planes)
    if skip:
        stats.indicator_foreground = [sum(fg[w] for w in ind) for ind in plan.indicators_of_plane]
    run([w for k, r in zip(keep, plan.rest_of_plane) if k for w in r], count_fg=grow)
    neighbourhoods = [[cells.cells(windows[w], margin=1) for w in r] for r in plan.rest_of_plane] \
        if grow else []
    while grow:  # growth safeguard: fixed point over the skipped planes
        new = planes_to_grow(keep, neighbourhoods, fg_cells, skip_threshold)
        if not new:
            break
        for q in new:
            keep[q] = True
            stats.planes_grown.append(planes[q].z)
        run([w for q in new for w in plan.rest_of_plane[q]], count_fg=True)
    for pl, k, r in zip(planes, keep, plan.rest_of_plane):
        if not k:
            stats.planes_skipped.append(pl.z)
            stats.windows_skipped += len(r)
    if stats.windows_skipped or stats.planes_grown:
        log.debug("skipped %d of %d windows (%d planes), %d planes grown", stats.windows_skipped,
                  stats.windows_total, len(stats.planes_skipped), len(stats.planes_grown))

    # divided in place (no second (K, Z, Y, X) copy) before the argmax too: in float16 the
    # quotient's rounding can tie two classes, and stock's argmax sees the quotient
    logits, weight = acc[0][(slice(None), *crop)], weight[crop]
    covered = weight > 0
    all_covered = bool(covered.all())
    if not all_covered:
        weight.masked_fill_(~covered, 1)
    out = logits.div_(weight)
    if acc_dtype == torch.float16 and bool(torch.isinf(out).any()):
        log.warning("float16 sliding-window logits overflowed (inf); predicting this volume again "
                    "in float32 (stock nnU-Net aborts here)")
        del acc[:], logits, weight, out
        return predict_sliding_window(volume, predictor, patch, step_size, batch_windows, skip,
                                      skip_threshold, torch.float32, return_logits, pad_value,
                                      progress, grow=grow, starts=starts, pad_batch=pad_batch,
                                      windows_done=windows_done, acc_device=acc_device)
    if return_logits:
        if not all_covered:   # masked fills: no index tensor (int64 per uncovered voxel) is built
            uncovered = ~covered
            out[1:].masked_fill_(uncovered, UNCOVERED_LOGIT)
            out[0].masked_fill_(uncovered, 0)
        return out, stats
    labels = out.argmax(0).to(torch.uint8)
    labels.mul_(covered)
    return labels, stats
