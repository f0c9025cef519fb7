"""Labels of the fast predictor in float32 / float16 / bfloat16 against float32 and against stock
nnUNetPredictor on the same device (stock on CUDA runs under fp16 autocast), on a fitted tiny model
and the phantom CT of bench/predictor_speed.py; plus, per run, the CUDA allocator's peak next to the
card's used memory (NVML total - free) as the FLARE harness reads it.

    python -m bench.gpu_precision --device cuda --z 80,200
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from tests.tiny_model import fit_model_folder, tiny_plans, write_model_folder
from bench._common import run_bench
from bench.predictor_speed import synthetic_ct, timed_run
from flareseg.devices import resolve_device
from flareseg.evaluation.metrics import dice_per_class
from flareseg.inference.predictor import FastPredictor


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--z", default="80")
    ap.add_argument("--xy", type=int, default=256)
    ap.add_argument("--fit-steps", type=int, default=150)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    spacing, model_spacing = (2.5, 0.8, 0.8), (2.5, 1.5, 1.5)
    zs = [int(z) for z in args.z.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="flareseg_prec_"))
    md = write_model_folder(tmp / "model", plans=tiny_plans(patch_size=(32, 64, 64), spacing=model_spacing,
                                                            features=(8, 16, 32, 64)), seed=0)
    train_shape = tuple(int(round(n * s / t)) for n, s, t in zip((min(zs), args.xy, args.xy), spacing, model_spacing))
    pairs = [synthetic_ct(train_shape, model_spacing, seed=s) for s in (1, 2)]
    fit_model_folder(md, [p[0] for p in pairs], [p[1] for p in pairs], steps=args.fit_steps, batch_size=2)

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    stock = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=device,
                            perform_everything_on_device=device.type == "cuda", allow_tqdm=False)
    stock.initialize_from_trained_model_folder(str(md), use_folds=(0,))
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print("| Z | predictor | s | alloc peak MB | NVML used MB | voxels != fast fp32 | voxels != stock | "
          "mean Dice vs stock |")
    print("|---|---|---|---|---|---|---|---|")
    for z in zs:
        ct, _ = synthetic_ct((z, args.xy, args.xy), spacing, seed=0)
        img = sitk.GetImageFromArray(ct)
        img.SetSpacing(tuple(reversed(spacing)))
        arr = ct.astype(np.float32)[None]
        stock.predict_single_npy_array(arr, {"spacing": list(spacing)})
        ref, s, pk, us = timed_run(lambda: stock.predict_single_npy_array(arr, {"spacing": list(spacing)}), device)
        rows = [("stock (device default)", ref, s, pk, us)]
        # float16 with one window per batch: the network sees stock's batch shape (batch size
        # changes cuDNN's algorithm and so the float16 window logits themselves)
        for dt, bw in (("float32", 4), ("float16", 4), ("bfloat16", 4), ("float16", 1)):
            fp = FastPredictor(md, device=device.type, dtype=dt, skip_windows=False, batch_windows=bw)
            fp.predict(img)
            res, s, pk, us = timed_run(lambda: fp.predict(img), device)
            rows.append((f"fast --no-skip {dt}" + (f", {bw} window/batch" if bw == 1 else ""),
                         sitk.GetArrayFromImage(res), s, pk, us))
        f32 = rows[1][1]
        for name, lab, s, pk, us in rows:
            d = dice_per_class(lab, ref)
            print(f"| {z} | {name} | {s:.2f} | {'-' if pk is None else f'{pk:.0f}'} | "
                  f"{'-' if us is None else f'{us:.0f}'} | {int((lab != f32).sum())} | {int((lab != ref).sum())} | "
                  f"{np.mean(list(d.values())) if d else float('nan'):.5f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "gpu_precision"))
