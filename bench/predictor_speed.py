"""Stock nnUNetPredictor vs FastPredictor (with and without window skipping), side by side.

Same model folder, same synthetic CT, no mirroring.  The model is a small PlainConvUNet fitted
for a few steps to the phantom (random weights give white-noise label maps, which would make the
Dice agreement meaningless).  Reports seconds, speed-up and per-class Dice between outputs.

    python bench/predictor_speed.py                      # 256x256x80 CT, CPU
    python bench/predictor_speed.py --device cuda --z 200 --out docs/benchmarks/predictor.md
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flareseg.evaluation.metrics import dice_per_class  # noqa: E402
from flareseg.inference.predictor import FastPredictor, resolve_device  # noqa: E402
from flareseg.labels import CLASS_NAMES  # noqa: E402
from flareseg.nnunet.model_folder import fit_model_folder, tiny_plans, write_model_folder  # noqa: E402

# (FLARE class, HU, centre (z, y, x) as a fraction of the extent from the middle, radii mm)
ORGANS = [(1, 60, (0.05, -0.05, -0.18), (60, 55, 70)),
          (3, 110, (0.08, 0.05, 0.25), (45, 35, 30)),
          (2, 160, (-0.12, 0.15, -0.15), (40, 25, 22)),
          (13, 160, (-0.12, 0.15, 0.17), (40, 25, 22)),
          (14, 10, (0.08, -0.02, -0.2), (15, 15, 15))]


def synthetic_ct(shape_zyx, spacing_zyx, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(Z, Y, X)`` int16 HU phantom (body, lungs in the top quarter, organs, tumor) and its labels."""
    rng = np.random.default_rng(seed)
    ext = [n * s for n, s in zip(shape_zyx, spacing_zyx)]
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(shape_zyx, spacing_zyx, ext)],
                          indexing="ij", sparse=True)
    ct = np.full(shape_zyx, -1000, dtype=np.float32)
    lab = np.zeros(shape_zyx, dtype=np.uint8)
    body = (y / (0.33 * ext[1])) ** 2 + (x / (0.42 * ext[2])) ** 2 < 1
    ct[np.broadcast_to(body, shape_zyx)] = -80
    lungs = (z > 0.25 * ext[0]) & body & ((np.abs(x) - 0.2 * ext[2]) ** 2 / (0.15 * ext[2]) ** 2
                                          + (y / (0.22 * ext[1])) ** 2 < 1)
    ct[lungs] = -800
    for c, hu, ctr, rad in ORGANS:
        m = sum(((a - f * e) / r) ** 2 for a, f, e, r in zip((z, y, x), ctr, ext, rad)) < 1
        ct[m] = hu
        lab[m] = c
    ct += rng.normal(0, 10, shape_zyx)
    return ct.astype(np.int16), lab


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--z", type=int, default=80, help="slices of the CT (default 80)")
    ap.add_argument("--xy", type=int, default=256, help="in-plane size (default 256)")
    ap.add_argument("--inplane-mm", type=float, default=0.8, help="in-plane spacing (default 0.8 mm)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fit-steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    spacing = (2.5, args.inplane_mm, args.inplane_mm)
    model_spacing, patch = (2.5, 1.5, 1.5), (32, 64, 64)

    tmp = Path(tempfile.mkdtemp(prefix="flareseg_bench_"))
    plans = tiny_plans(patch_size=patch, spacing=model_spacing, features=(8, 16, 32, 64))
    md = write_model_folder(tmp / "model", plans=plans, seed=0)
    train_shape = tuple(int(round(n * s / t)) for n, s, t in zip((args.z, args.xy, args.xy), spacing, model_spacing))
    t = time.perf_counter()
    pairs = [synthetic_ct(train_shape, model_spacing, seed=s) for s in (1, 2)]
    fit_model_folder(md, [p[0] for p in pairs], [p[1] for p in pairs], steps=args.fit_steps, batch_size=2)
    fit_s = time.perf_counter() - t

    ct, gt = synthetic_ct((args.z, args.xy, args.xy), spacing, seed=0)
    img = sitk.GetImageFromArray(ct)
    img.SetSpacing(tuple(reversed(spacing)))

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    stock = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=device,
                            perform_everything_on_device=device.type == "cuda", allow_tqdm=False)
    stock.initialize_from_trained_model_folder(str(md), use_folds=(0,))
    t = time.perf_counter()
    ref = stock.predict_single_npy_array(ct.astype(np.float32)[None], {"spacing": list(spacing)})
    stock_s = time.perf_counter() - t

    rows = []
    outs = {}
    for name, kw in [("fast, no skip", dict(skip=False)), ("fast, skip", dict(skip=True))]:
        fp = FastPredictor(md, device=device, **kw)
        fp.predict(img)  # warm-up (kernel selection); the stock run above had no warm-up either way
        t = time.perf_counter()
        res = fp.run(img)
        sec = time.perf_counter() - t
        outs[name] = sitk.GetArrayFromImage(res.labels)
        rows.append((name, sec, res.stats))

    d_ns = dice_per_class(outs["fast, no skip"], ref)
    fg = outs["fast, no skip"] > 0
    unchanged = float((outs["fast, skip"][fg] == outs["fast, no skip"][fg]).mean()) if fg.any() else 1.0
    d_gt = dice_per_class(ref, gt)
    names = {c: CLASS_NAMES[c] for c in d_ns}
    lines = [
        "# Predictor speed: stock nnUNetPredictor vs FastPredictor",
        "",
        f"Command: `python bench/predictor_speed.py --z {args.z} --xy {args.xy} --inplane-mm {args.inplane_mm} "
        f"--fit-steps {args.fit_steps} --device {args.device}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device `{device}`" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 " (no GPU)") + f"; torch {torch.__version__}.",
        "",
        f"Case: synthetic CT {args.xy}x{args.xy}x{args.z} at {spacing[1]:.2f}x{spacing[2]:.2f}x{spacing[0]} mm; "
        f"model PlainConvUNet features (8, 16, 32, 64), patch {patch} at {model_spacing} mm, "
        f"fitted {args.fit_steps} steps on phantoms ({fit_s:.0f} s). No mirroring anywhere.",
        "",
        "| predictor | seconds | speed-up vs stock | windows run / total | steps (s) |",
        "|---|---|---|---|---|",
        f"| stock nnUNetPredictor | {stock_s:.2f} | 1.0x | - | - |",
    ]
    for name, sec, st in rows:
        w = st["windows"]
        steps = ", ".join(f"{k} {v:.2f}" for k, v in st["seconds"].items() if k != "total")
        lines.append(f"| {name} | {sec:.2f} | {stock_s / sec:.1f}x | {w['windows_run']} / {w['windows_total']} | {steps} |")
    lines += [
        "",
        "Agreement (Dice per class present in either output):",
        "",
        "| class | fast (no skip) vs stock | stock vs phantom truth |",
        "|---|---|---|",
    ]
    for c in sorted(d_ns):
        lines.append(f"| {c} {names[c]} | {d_ns[c]:.4f} | {d_gt.get(c, float('nan')):.4f} |")
    lines += ["", f"Mean Dice fast (no skip) vs stock: {np.mean(list(d_ns.values())):.4f}. "
                  f"Foreground voxels unchanged by skipping: {100 * unchanged:.3f}%.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
