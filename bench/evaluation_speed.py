"""Speed of FLARE23 DSC/NSD evaluation on a synthetic 512x512x300 pair with 14 classes.

Compares ``flareseg.evaluation.evaluate_case`` (bounding boxes of all classes found in one
``find_objects`` pass, masks built only inside each class's box) with two references computing
the same numbers:

* "official-style": the structure of the FLARE22/23 evaluation script, per class a full-volume
  ``pred == c`` / ``ref == c`` mask, then the surface-distance package's own crop to the union
  bounding box (found with ``np.any`` over the full masks) before the distance transforms;
* "no crop": masks and distance transforms over the whole scan.  Slow, so by default it runs on
  one class and is extrapolated to 14.

The contenders run alternately in one process (ours, official-style, no-crop, then the order
shifted by one each round), and ratios are the median of the per-round ratios.

    python -m bench.evaluation_speed [--ref-classes 1 4] [--full-ref] [--repeats 3] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bench._common import (add_overwrite_arg, interleaved, machine_line,  # noqa: E402
                           refuse_input_outputs, run_bench, write_report)
from flareseg.config import EvaluationConfig  # noqa: E402
from flareseg.evaluation.metrics import dice, evaluate_case, surface_dice  # noqa: E402
from flareseg.labels import FOREGROUND  # noqa: E402

SPACING = (2.5, 0.8, 0.8)  # mm (z, y, x), typical abdominal CT
# class: (centre z, y, x as fractions of the volume, semi-axes in mm z, y, x)
ORGANS = {
    1: (0.55, 0.45, 0.30, 80, 90, 75), 2: (0.45, 0.60, 0.33, 50, 30, 28),
    3: (0.60, 0.55, 0.72, 45, 45, 30), 4: (0.50, 0.48, 0.55, 15, 18, 55),
    5: (0.50, 0.52, 0.52, 150, 11, 11), 6: (0.50, 0.52, 0.42, 120, 12, 12),
    7: (0.62, 0.58, 0.38, 15, 12, 5), 8: (0.60, 0.58, 0.62, 15, 12, 5),
    9: (0.48, 0.38, 0.32, 30, 15, 15), 10: (0.85, 0.55, 0.52, 60, 8, 8),
    11: (0.62, 0.40, 0.62, 60, 45, 50), 12: (0.45, 0.45, 0.45, 30, 15, 40),
    13: (0.45, 0.60, 0.68, 50, 30, 28), 14: (0.50, 0.40, 0.25, 20, 20, 20),
}


def synthetic_pair(shape=(300, 512, 512), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference with 14 ellipsoid 'organs' and a prediction with shifted, boundary-noised organs."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for c, (fz, fy, fx, az, ay, ax) in ORGANS.items():
        centre = np.array([fz, fy, fx]) * shape
        semi = np.array([az, ay, ax]) / SPACING
        lo = np.maximum(np.floor(centre - semi - 3).astype(int), 0)
        hi = np.minimum(np.ceil(centre + semi + 3).astype(int), shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        for lab, shift, noise in ((ref, 0.0, 0.0), (pred, 1.0, 0.08)):
            q = sum(((g - (c0 + shift * rng.uniform(-1, 1))) / s) ** 2 for g, c0, s in zip(grid, centre, semi))
            inside = q <= 1.0 + noise * rng.standard_normal(q.shape)
            lab[tuple(slice(a, b) for a, b in zip(lo, hi))][inside] = c
    return pred, ref


def _full_masks(pred, ref, c: int, cfg: EvaluationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Full-volume masks of class ``c``, cut to the reference's slices for z-range classes."""
    p, r = pred == c, ref == c
    if c in cfg.z_range_classes and r.any():
        zs = np.flatnonzero(r.any(axis=(1, 2)))
        p, r = p[zs[0]:zs[-1] + 1], r[zs[0]:zs[-1] + 1]
    return p, r


def _score(p, r, c: int, cfg: EvaluationConfig) -> tuple[float, float]:
    d = dice(p, r)
    return d, (surface_dice(p, r, SPACING, cfg.nsd_tolerance_mm[c]) if d >= cfg.nsd_min_dsc else 0.0)


def full_volume_case(pred, ref, cfg: EvaluationConfig, classes) -> dict[int, tuple[float, float]]:
    """Same rules, no cropping: masks and surfaces over the whole (z-range cut) volume."""
    return {c: _score(*_full_masks(pred, ref, c, cfg), c, cfg) for c in classes}


def official_style_case(pred, ref, cfg: EvaluationConfig) -> dict[int, tuple[float, float]]:
    """Per class: full-volume masks, z-range cut, crop to the union bounding box, then the metric."""
    out = {}
    for c in FOREGROUND:
        p, r = _full_masks(pred, ref, c, cfg)
        if not r.any():
            out[c] = (1.0, 1.0) if not p.any() else (0.0, 0.0)
            continue
        u = p | r
        box = []
        for ax in range(3):
            idx = np.flatnonzero(u.any(axis=tuple(a for a in range(3) if a != ax)))
            box.append(slice(int(idx[0]), int(idx[-1]) + 1))
        out[c] = _score(p[tuple(box)], r[tuple(box)], c, cfg)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-classes", type=int, nargs="+", default=[1],
                    help="classes for the full-volume reference (default: 1, the liver)")
    ap.add_argument("--full-ref", action="store_true", help="run the reference on all 14 classes")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each times every contender once")
    ap.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    ap.add_argument("--out", default=None, help="also write the report (markdown) to this file")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_input_outputs({"--out": args.out}, overwrite=args.overwrite)   # synthetic inputs: only a stranger's file
    cfg = EvaluationConfig()
    t0 = time.perf_counter()
    pred, ref = synthetic_pair(tuple(args.shape))
    built = time.perf_counter() - t0
    ref_classes = list(FOREGROUND) if args.full_ref else args.ref_classes
    got: dict[str, dict] = {}
    contenders = {
        "ours": lambda: got.__setitem__("ours", evaluate_case(pred, ref, SPACING, cfg)),
        "official": lambda: got.__setitem__("official", official_style_case(pred, ref, cfg)),
        "nocrop": lambda: got.__setitem__("nocrop", full_volume_case(pred, ref, cfg, ref_classes)),
    }
    times = interleaved(contenders, args.repeats, reduce=None, rotate=True)
    ours, official, full = got["ours"], got["official"], got["nocrop"]
    worst_off = max(max(abs(ours[c][0] - official[c][0]), abs(ours[c][1] - official[c][1])) for c in FOREGROUND)
    worst = max(max(abs(ours[c][0] - full[c][0]), abs(ours[c][1] - full[c][1])) for c in ref_classes)
    scale = len(FOREGROUND) / len(ref_classes)      # no-crop time extrapolated to the 14 classes

    def ratio(name: str, k: float = 1.0) -> float:
        return statistics.median(t * k / o for o, t in zip(times["ours"], times[name]))

    def med(name: str) -> float:
        return statistics.median(times[name])

    lines = [machine_line(), "",
             f"`python -m bench.evaluation_speed --repeats {args.repeats} --shape {' '.join(map(str, args.shape))} "
             + ("--full-ref" if args.full_ref else "--ref-classes " + " ".join(map(str, ref_classes))) + "`", "",
             f"synthetic pair {ref.shape} uint8, spacing {SPACING} mm, built in {built:.1f} s; voxels per class (ref): "
             + str({c: int(v) for c, v in enumerate(np.bincount(ref.ravel(), minlength=15)) if c}), "",
             "| class | DSC | NSD |", "|---|---|---|"]
    lines += [f"| {c} | {ours[c][0]:.4f} | {ours[c][1]:.4f} |" for c in FOREGROUND]
    lines += ["", "| contender | seconds, 14 classes (median; rounds) | ratio vs ours (median of rounds) | max abs difference |",
              "|---|---|---|---|",
              f"| flareseg evaluate_case (crop) | {med('ours'):.2f} ("
              + ", ".join(f"{t:.2f}" for t in times["ours"]) + ") | 1.0x | - |",
              f"| official-style (full-volume masks per class, then crop) | {med('official'):.2f} ("
              + ", ".join(f"{t:.2f}" for t in times["official"]) + f") | {ratio('official'):.1f}x | {worst_off:.2e} |",
              f"| no crop, classes {ref_classes}" + ("" if args.full_ref else " (time extrapolated to 14)")
              + f" | {med('nocrop') * scale:.1f} | {ratio('nocrop', scale):.1f}x | {worst:.2e} |"]
    write_report("\n".join(lines) + "\n", args.out, overwrite=args.overwrite)


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "evaluation_speed"))
