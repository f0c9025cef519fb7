"""Benchmark: flareseg.cleaning.clean_label vs a straightforward scipy implementation.

The reference applies the same three rules with ``scipy.ndimage.label`` per class on the full
volume and one full-volume ``distance_transform_edt``; both run on the same synthetic 512x512x300
label maps in one process, alternating (ours, reference, reference, ours, ...: a change of machine
load hits both alike), the outputs are checked to be identical, and the median of the per-round
time ratios printed.

    python -m bench.cleaning_speed [--cases 3] [--shape 300 512 512] [--repeats 2] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
from typing import Sequence

import numpy as np
from scipy import ndimage

from bench._common import (add_overwrite_arg, interleaved, machine_line, refuse_input_outputs, run_bench,
                           write_report)
from flareseg.anatomy import abdomen_region, bbox_of, organ_mask
from flareseg.cleaning import clean_label
from flareseg.config import CleaningConfig
from flareseg.labels import ORGANS, TUMOR


def reference_clean(label: np.ndarray, spacing: Sequence[float], cfg: CleaningConfig,
                    image: np.ndarray | None = None) -> np.ndarray:
    """The three cleaning rules the plain way: full-volume labelling and distance transform."""
    struct = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[cfg.connectivity])
    out = label.copy()
    for c in np.unique(out):
        if c == 0:
            continue
        lab, n = ndimage.label(out == c, struct)
        sizes = np.bincount(lab.ravel())
        small = np.flatnonzero(sizes < cfg.min_voxels)
        out[np.isin(lab, small[small > 0])] = 0
    has_organs = organ_mask(out).any()
    if cfg.remove_outside_abdomen and (has_organs or image is not None):
        region = abdomen_region(out, spacing, cfg.abdomen_margin_mm, image=image)
        lab, n = ndimage.label(out == TUMOR, struct)
        if n:
            inside = ndimage.maximum(region, lab, np.arange(1, n + 1))
            out[np.isin(lab, np.flatnonzero(~np.asarray(inside, bool)) + 1)] = 0
    organ = organ_mask(out)
    if cfg.remove_far_from_organs and organ.any():
        dist = ndimage.distance_transform_edt(~organ, sampling=tuple(spacing))
        lab, n = ndimage.label(out == TUMOR, struct)
        if n:
            dmin = np.asarray(ndimage.minimum(dist, lab, np.arange(1, n + 1)))
            out[np.isin(lab, np.flatnonzero(dmin > cfg.max_organ_distance_mm) + 1)] = 0
    return out


def _ellipsoid(out: np.ndarray, centre_mm, radii_mm, spacing, value: int) -> None:
    """Paint a solid ellipsoid (centre/radii in mm) with ``value``, inside its bbox only."""
    box, grids = [], []
    for c, r, s, n in zip(centre_mm, radii_mm, spacing, out.shape):
        lo, hi = max(0, int((c - r) / s)), min(n, int(np.ceil((c + r) / s)) + 1)
        box.append(slice(lo, hi))
        grids.append(((np.arange(lo, hi) * s - c) / r) ** 2)
    if any(b.stop <= b.start for b in box):
        return
    inside = grids[0][:, None, None] + grids[1][None, :, None] + grids[2][None, None, :] <= 1
    out[tuple(box)][inside] = value


def synthetic_label(rng: np.random.Generator, shape=(300, 512, 512),
                    spacing=(1.5, 0.8, 0.8)) -> np.ndarray:
    """Abdomen-like map: 13 organ ellipsoids, noise specks, tumors on organs, in the corners of
    the organ bounding box (inside the abdominal region, mostly far from organs) and one in the
    corner of the volume (outside the region)."""
    out = np.zeros(shape, np.uint8)
    ext = np.array(shape) * np.array(spacing)          # mm extent (z, y, x)
    centre = ext / 2
    for c in ORGANS:
        pos = centre + rng.uniform(-0.22, 0.22, 3) * ext * np.array([0.6, 1, 1])
        _ellipsoid(out, pos, rng.uniform(20, 60, 3), spacing, c)
    bb = bbox_of(out > 0)                                 # organ bounding box
    organ_vox = np.argwhere(out[::4, ::8, ::8] > 0) * np.array([4, 8, 8])
    for _ in range(300):                                  # noise specks of 1..~60 voxels
        p = organ_vox[rng.integers(len(organ_vox))] * np.array(spacing) + rng.normal(0, 30, 3)
        _ellipsoid(out, p, rng.uniform(0.8, 2.5, 3), spacing, int(rng.integers(1, 15)))
    for _ in range(6):                                    # tumors on an organ surface: kept
        p = organ_vox[rng.integers(len(organ_vox))] * np.array(spacing)
        _ellipsoid(out, p, rng.uniform(6, 15, 3), spacing, TUMOR)
    for corner in itertools.product(*[(s.start + 4, s.stop - 5) for s in bb]):
        # tumors in the corners of the organ bbox: inside the region, often far from organs
        _ellipsoid(out, np.array(corner) * spacing, (4, 4, 4), spacing, TUMOR)
    _ellipsoid(out, (10, 10, 10), (6, 6, 6), spacing, TUMOR)  # corner: outside the abdomen
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    ap.add_argument("--repeats", type=int, default=2,
                    help="rounds per case; each round times ours and the reference (order alternating)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    add_overwrite_arg(ap)
    a = ap.parse_args(argv)
    refuse_input_outputs({"--out": a.out}, overwrite=a.overwrite)   # synthetic inputs: only a stranger's file
    spacing = (1.5, 0.8, 0.8)
    cfg = CleaningConfig()
    rng = np.random.default_rng(a.seed)
    lines = [machine_line(), "", f"config: {cfg}", "",
             f"`python -m bench.cleaning_speed --cases {a.cases} --shape {' '.join(map(str, a.shape))} "
             f"--repeats {a.repeats} --seed {a.seed}`", "",
             "| case | shape | removed | ours s (median) | scipy s (median) | ratio (median of rounds) | same |",
             "|---|---|---|---|---|---|---|"]
    t_ours, t_ref, ratios, mismatch = [], [], [], 0
    for i in range(a.cases):
        label = synthetic_label(rng, tuple(a.shape), spacing)
        got: dict[str, object] = {}

        def ours_fn():
            got["ours"] = clean_label(label, spacing, cfg)

        def ref_fn():
            got["ref"] = reference_clean(label, spacing, cfg)

        times = interleaved({"ours": ours_fn, "scipy": ref_fn}, a.repeats, reduce=None, rotate=True)
        ours, records = got["ours"]
        same = bool(np.array_equal(ours, got["ref"]))
        mismatch += not same
        per_round = [r / o for o, r in zip(times["ours"], times["scipy"])]
        t_ours.append(statistics.median(times["ours"]))
        t_ref.append(statistics.median(times["scipy"]))
        ratios += per_round
        reasons = {r: sum(x.reason == r for x in records) for r in sorted({x.reason for x in records})}
        lines.append(f"| {i} | {'x'.join(map(str, label.shape))} | {len(records)} {reasons} | {t_ours[-1]:.3f} | "
                     f"{t_ref[-1]:.3f} | {statistics.median(per_round):.1f}x | {same}"
                     + ("" if same else f" ({int((ours != got['ref']).sum())} voxels differ)") + " |")
    lines += ["", f"mean: ours {np.mean(t_ours):.3f} s, scipy reference {np.mean(t_ref):.3f} s; "
                  f"median of the {len(ratios)} paired ratios {statistics.median(ratios):.1f}x"]
    write_report("\n".join(lines) + "\n", a.out, overwrite=a.overwrite)
    return 1 if mismatch else 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "cleaning_speed"))
