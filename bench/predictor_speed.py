"""Stock nnUNetPredictor vs FastPredictor (with and without window skipping), side by side.

Same model folder, same synthetic CT, no mirroring, in one process (warm: each predictor runs
once untimed first), and with ``--cold`` each again in a fresh process per case as the FLARE
harness times it (interpreter start-up, imports, model load, read, predict, write).  Reports
seconds, speed-up, peak GPU memory (``torch.cuda.max_memory_allocated``) next to the FLARE figure
(used memory of the card, total - free, sampled as ``flareseg efficiency`` samples it, of the card
this process runs on) and per-class Dice between outputs, for every ``--z``.

``--plan tiny`` (default): a small PlainConvUNet fitted for a few steps to the phantom (random
weights give white-noise label maps, which would make the agreement meaningless).
``--plan paper``: nnU-Net's own network size (32…320 features, two convolutions per stage) at the
coarse spacing, fitted ``--fit-steps`` steps (default 10; 0: random weights, speed and memory only)
so that its logits are not near-tied and Dice vs stock means something.
``--dtype``: flareseg's network precision(s), comma-separated (``auto``, ``float32``, ``bfloat16``,
``float16``): one pair of rows (no skip / skip) per dtype; stock runs its own way (float32 on a CPU).
``--runtime``: flareseg's network runtime(s) (``torch``, ``openvino``), rows per dtype and runtime;
``--variants`` picks the rows' window skipping (``noskip,skip`` by default).  OpenVINO converts the
network once into a cache in the bench's temporary folder (its seconds are reported); the cold
processes read it from there, as every process after a user's first does.
Each predictor's untimed warm-up runs on the case's first ``--warmup-slices`` slices (all of it with
0), enough for every batch shape, so a paper-size CPU run does not pay a whole case twice.  Cold runs
also report the process's peak RSS (``wait4``'s ``ru_maxrss``).

    # issue 18's CPU table (~25 min for Z = 100 on 2 cores; bfloat16 only where the CPU has it):
    python -m bench.predictor_speed --plan paper --z 100 --xy 512 --dtype float32 --runtime torch,openvino \
        --variants skip --cold --out docs/benchmarks/predictor_paper_cpu.md

    python -m bench.predictor_speed                      # 256x256x80 CT, CPU
    python -m bench.predictor_speed --device cuda --plan paper --patch 128,128,128 --z 100,200,400 \
        --xy 512 --cold --out docs/benchmarks/predictor_gpu.md
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from bench._common import add_overwrite_arg, machine_line, refuse_input_outputs, run_bench, write_report
from flareseg.evaluation.gpu_memory import MemorySampler, probe_backend
from flareseg.evaluation.metrics import dice_per_class, foreground_unchanged
from flareseg.devices import resolve_device
from flareseg.inference.predictor import FastPredictor
from tests.tiny_model import fit_model_folder, tiny_plans, write_model_folder

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


STOCK_COLD = """
import sys, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
model, src, dst, dev = sys.argv[1:5]
p = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device(dev),
                    perform_everything_on_device=dev == "cuda", allow_tqdm=False)
p.initialize_from_trained_model_folder(model, use_folds=(0,))
p.predict_from_files([[src]], [dst], save_probabilities=False, overwrite=True,
                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
"""


def cold_run(cmd: list[str]) -> tuple[float, float]:
    """``(wall seconds, peak RSS MB)`` of one fresh process running ``cmd`` (fails loudly with its
    output); the RSS is this child's own ``ru_maxrss`` from ``wait4``."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    sec = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-3000:]}")
    return sec, usage.ru_maxrss / 1024


def timed_run(fn, device: torch.device):
    """``(result, seconds, peak MB, used MB)``: the CUDA allocator's peak, and the FLARE figure: the
    card's used memory (total - free, NVML or nvidia-smi, as the FLARE harness reads it) sampled
    every 20 ms, of the card ``device`` is (``CUDA_VISIBLE_DEVICES`` mapped to the physical card);
    this process holds every predictor's model, so it is an upper bound for one predictor in its own
    process.  Both None on the CPU."""
    backend = probe_backend(device.index or 0) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sampler = MemorySampler(backend.reader, 0.02).start() if backend else None
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    sec = time.perf_counter() - t
    used = max(sampler.stop(), default=None) if sampler else None
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return out, sec, peak, used


def _dice_cell(d: dict[int, float]) -> str:
    """Dice per present class vs stock: mean, and the worst class."""
    if not d:
        return "nan"
    worst = min(d, key=d.get)
    return f"{np.mean(list(d.values())):.4f} (min {d[worst]:.4f}, class {worst})"


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--z", default="80", help="slices of the CT, comma-separated for several cases (default 80)")
    ap.add_argument("--xy", type=int, default=256, help="in-plane size (default 256)")
    ap.add_argument("--inplane-mm", type=float, default=0.8, help="in-plane spacing (default 0.8 mm)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--plan", choices=["tiny", "paper"], default="tiny",
                    help="tiny: small fitted network; paper: nnU-Net-size network, random weights")
    ap.add_argument("--patch", default=None, help="patch z,y,x (default tiny 32,64,64; paper 32,192,192)")
    ap.add_argument("--fit-steps", type=int, default=None,
                    help="fitting steps on phantoms (default tiny 150, paper 10; 0: random weights)")
    ap.add_argument("--dtype", default="auto",
                    help="flareseg's inference.dtype, comma-separated for one row pair each "
                         "(auto, float32, bfloat16, float16; default auto)")
    ap.add_argument("--runtime", default="torch",
                    help="flareseg's inference.runtime, comma-separated (torch, openvino; default torch)")
    ap.add_argument("--variants", default="noskip,skip",
                    help="flareseg rows: noskip, skip or both (default noskip,skip)")
    ap.add_argument("--warmup-slices", type=int, default=48,
                    help="slices of each case the untimed warm-up runs on (0: the whole case; default 48)")
    ap.add_argument("--cold", action="store_true", help="also time one fresh process per predictor and case")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_input_outputs({"--out": args.out}, overwrite=args.overwrite)   # synthetic inputs: only a stranger's file
    device = resolve_device(args.device)
    kept = False
    if device.type == "cpu":   # as flareseg predict does on a CPU; in this process stock gets it too
        from flareseg.inference.cpu_memory import keep_freed_memory
        kept = keep_freed_memory()
    zs = [int(z) for z in str(args.z).split(",") if z.strip()]
    spacing = (2.5, args.inplane_mm, args.inplane_mm)
    model_spacing = (2.5, 1.5, 1.5)
    paper = args.plan == "paper"
    if args.fit_steps is None:
        args.fit_steps = 10 if paper else 150
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in ("auto", "float32", "bfloat16", "float16")]
    if bad or not dtypes:
        ap.error(f"--dtype: unknown {bad or args.dtype!r} (auto, float32, bfloat16, float16)")
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    if not runtimes or any(r not in ("torch", "openvino") for r in runtimes):
        ap.error(f"--runtime: expected torch and/or openvino, got {args.runtime!r}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in ("noskip", "skip") for v in variants):
        ap.error(f"--variants: expected noskip and/or skip, got {args.variants!r}")
    patch = tuple(int(p) for p in args.patch.split(",")) if args.patch else \
        ((32, 192, 192) if paper else (32, 64, 64))
    features = (32, 64, 128, 256, 320, 320) if paper else (8, 16, 32, 64)

    tmp = Path(tempfile.mkdtemp(prefix="flareseg_bench_"))
    os.environ["FLARESEG_CACHE_DIR"] = str(tmp / "cache")   # OpenVINO conversions: this run's own (children too)
    plans = tiny_plans(patch_size=patch, spacing=model_spacing, features=features,
                       convs_per_stage=2 if paper else 1)
    md = write_model_folder(tmp / "model", plans=plans, seed=0)
    fit_s = 0.0
    if args.fit_steps > 0:
        # at least one patch per axis (the paper's 192 in-plane exceeds a 256 x 0.8 mm case)
        train_shape = tuple(max(p, int(round(n * s / t))) for n, s, t, p in
                            zip((min(zs), args.xy, args.xy), spacing, model_spacing, patch))
        t = time.perf_counter()
        pairs = [synthetic_ct(train_shape, model_spacing, seed=s) for s in (1, 2)]
        fit_model_folder(md, [p[0] for p in pairs], [p[1] for p in pairs], steps=args.fit_steps,
                         batch_size=1 if paper else 2)
        fit_s = time.perf_counter() - t

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    stock = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=device,
                            perform_everything_on_device=device.type == "cuda", allow_tqdm=False)
    stock.initialize_from_trained_model_folder(str(md), use_folds=(0,))
    fast, conversions = {}, []
    for dt in dtypes:
        for rt in runtimes:
            for name, skip in (("fast, no skip", False), ("fast, skip", True)):
                if ("skip" if skip else "noskip") not in variants:
                    continue
                t = time.perf_counter()
                fp = FastPredictor(md, device=device.type, skip_windows=skip, dtype=dt, runtime=rt)
                if fp.runtime_model == "converted":
                    conversions.append(f"OpenVINO conversion {time.perf_counter() - t:.1f} s (once; later "
                                       f"processes read the cache)")
                fast[f"{name}, {fp.dtype_name}" + (" (auto)" if dt == "auto" else "")
                     + (f", {rt}" if rt != "torch" else "")] = (fp, dt, skip, rt)

    model_desc = (f"PlainConvUNet features {features}, {2 if paper else 1} conv(s) per stage, patch {patch} "
                  f"at {model_spacing} mm, " + ("random weights" if not args.fit_steps else
                                                f"fitted {args.fit_steps} steps on phantoms ({fit_s:.0f} s)"))
    lines = [
        "# Predictor speed: stock nnUNetPredictor vs FastPredictor",
        "",
        f"Command: `python -m bench.predictor_speed --z {args.z} --xy {args.xy} --inplane-mm {args.inplane_mm} "
        f"--plan {args.plan}" + (f" --patch {args.patch}" if args.patch else "")
        + f" --fit-steps {args.fit_steps} --dtype {args.dtype} --runtime {args.runtime} --variants {args.variants}"
        + f" --device {args.device}" + (f" --warmup-slices {args.warmup_slices}" if args.warmup_slices != 48 else "")
        + (" --cold" if args.cold else "") + "`",
        "",
        f"Machine: {machine_line(str(device)).removeprefix('machine: ')}.",
        "",
        f"Cases: synthetic CT {args.xy}x{args.xy}xZ at {spacing[1]:.2f}x{spacing[2]:.2f}x{spacing[0]} mm; "
        f"model {model_desc}. No mirroring anywhere. Warm: in one process after an untimed run of each "
        f"predictor (on the case's first {args.warmup_slices or 'all'} slices); cold: a fresh process per case "
        f"(start-up, model load, read, predict, write), its peak RSS from wait4. "
        + ("Freed memory kept in the process (glibc mallopt) for both predictors' warm runs, and in "
           "flareseg predict's cold process (it does so on a CPU); stock's cold process runs as stock does."
           if kept else "Freed memory returned to the OS (glibc default) in the warm runs.")
        + (" " + "; ".join(conversions) + "." if conversions else ""),
        "",
        "| Z | predictor | warm s | speed-up vs stock | peak GPU MB | FLARE used MB (total - free) | cold s | "
        "cold speed-up | cold peak RSS MB | windows run / total | Dice vs stock (mean, worst class) | steps (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for z in zs:
        ct, gt = synthetic_ct((z, args.xy, args.xy), spacing, seed=0)
        img = sitk.GetImageFromArray(ct)
        img.SetSpacing(tuple(reversed(spacing)))
        case = tmp / f"case_z{z}_0000.nii.gz"
        sitk.WriteImage(img, str(case))
        arr = ct.astype(np.float32)[None]
        n_warm = min(z, args.warmup_slices) if args.warmup_slices > 0 else z
        warm_img = img[:, :, :n_warm]

        def stock_pred(a=arr):
            return stock.predict_single_npy_array(a, {"spacing": list(spacing)})
        stock_pred(arr[:, :n_warm])  # warm-up
        ref, stock_s, stock_peak, stock_used = timed_run(stock_pred, device)
        stock_cold, stock_rss = cold_run([sys.executable, "-c", STOCK_COLD, str(md), str(case),
                                          str(tmp / f"stock_z{z}"), device.type]) if args.cold else (None, None)
        lines.append(f"| {z} | stock nnUNetPredictor | {stock_s:.2f} | 1.0x | {_mb(stock_peak)} | {_mb(stock_used)} | "
                     + (f"{stock_cold:.2f} | 1.0x | {stock_rss:.0f}" if stock_cold else "- | - | -") + " | - | - | - |")
        outs = {}
        for name, (fp, dt, skip, rt) in fast.items():
            fp.predict(warm_img)  # warm-up (kernel selection, OpenVINO's compilation per batch shape)
            res, sec, peak, used = timed_run(lambda: fp.run(img), device)
            outs[name] = sitk.GetArrayFromImage(res.labels)
            cold, rss = None, None
            if args.cold:
                cmd = [sys.executable, "-m", "flareseg.cli", "predict", "-i", str(case), "-o",
                       str(tmp / f"ours_z{z}.nii.gz"), "-m", str(md), "--device", device.type,
                       "--dtype", dt, "--runtime", rt, "-q"]
                if not skip:
                    cmd.append("--no-skip")
                cold, rss = cold_run(cmd)
            w = res.stats["windows"]
            d = dice_per_class(outs[name], ref)
            steps = ", ".join(f"{k} {v:.2f}" for k, v in res.stats["seconds"].items() if k != "total")
            lines.append(f"| {z} | {name} | {sec:.2f} | {stock_s / sec:.1f}x | {_mb(peak)} | {_mb(used)} | "
                         + (f"{cold:.2f} | {stock_cold / cold:.1f}x | {rss:.0f}" if cold and stock_cold
                            else "- | - | -")
                         + f" | {w['windows_run']} / {w['windows_total']} | "
                         f"{_dice_cell(d)} | {steps} |")
        names = list(fast)
        notes = []
        if len(variants) == 2:   # each no-skip row is followed by its skip row
            notes.append("skip: foreground unchanged " + ", ".join(
                f"{100 * foreground_unchanged(outs[a], outs[b]):.3f}%" for a, b in zip(names[0::2], names[1::2])))
        d_gt = dice_per_class(ref, gt)
        notes.append(f"stock vs phantom truth {np.mean(list(d_gt.values())) if d_gt else float('nan'):.4f}")
        step = len(variants)
        for other in names[step::step]:   # the other precisions/runtimes vs the first row's: what they change
            notes.append(f"{other} vs {names[0]} per class " + ", ".join(
                f"{c}: {v:.4f}" for c, v in dice_per_class(outs[other], outs[names[0]]).items()))
        lines.append(f"| {z} | ({'; '.join(notes)}) | | | | | | | | | | |")
    text = "\n".join(lines) + "\n"
    write_report(text, args.out, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "predictor_speed"))
