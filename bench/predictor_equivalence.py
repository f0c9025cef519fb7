"""Equivalence of FastPredictor with stock nnUNetPredictor on a TRAINED model folder (issue 8).

Per case, in one run: (a) stock ``nnUNetPredictor`` (no mirroring, tile step 0.5, fold 0,
checkpoint_final), (b) FastPredictor without window skipping, (c) FastPredictor with skipping —
(b) and (c) for each FastPredictor resampling mode:

* ``fast``    — the default path: stock's order-3 B-spline image resampling (separate coarse axis
  for anisotropic spacing) on the device, stock's label export (logits linearly to the input
  grid before the argmax, computed only at label boundaries);
* ``linear``  — trilinear image resampling (``--image-resampling linear``), stock's label export;
* ``nearest`` — trilinear image resampling, nearest-neighbour upsampling of the model-resolution
  argmax (the default path before the B-spline and the boundary-only export);
* ``stock``   — ``--image-resampling nnunet``: the plans' own nnU-Net image resampling (scipy,
  CPU), stock's label export;
* ``nogrow``  — the default path with skipping but without its growth safeguard (``--no-grow``):
  what (c) loses when a plane's indicator windows miss an object its other windows hold;
* ``nocrop``  — the default path without the crop to the body (``--no-crop``): stock's window grid.

Reports per-class Dice of (b) vs (a) over classes present in either, their mean, the share of (b)'s
foreground voxels that (c) leaves unchanged, seconds (and ratio to stock), and with ``--labels`` the
mean Dice of (a) and (b) against the truth (classes present in the truth).

    python -m bench.predictor_equivalence --model WORK/stage-5-coarse/nnUNet_results/D/FlareSegTrainer__nnUNetPlans__coarse \\
        --images WORK/stage-1-fine/phantoms/imagesVal --labels WORK/stage-1-fine/phantoms/labelsVal
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from bench._common import (add_overwrite_arg, machine_line, nnunet_process, refuse_input_outputs, run_bench,
                           write_report)
from flareseg.cases import list_cases
from flareseg.evaluation.metrics import dice_per_class, foreground_unchanged
from flareseg.inference.commands import collect_inputs
from flareseg.devices import resolve_device
from flareseg.inference.predictor import FastPredictor
from flareseg.io import InputError, read_image
from flareseg.labels import CLASS_NAMES
from flareseg.nnunet.checkpoint import load_checkpoint
from flareseg.nnunet.env import trainer_dir

log = logging.getLogger("predictor_equivalence")

MODES = {"fast": {}, "linear": {"image_resampling": "linear"},
         "nearest": {"image_resampling": "linear", "resample_probabilities": False},
         "stock": {"image_resampling": "nnunet"}, "nogrow": {"skip_grow": False}, "nocrop": {"crop_to_body": False}}


def check_model_folder(model: Path, fold: str, checkpoint: str) -> Path:
    """The checkpoint path of ``model``/fold_``fold``; exits with a clear message when absent."""
    for need in ("dataset.json", "plans.json"):
        if not (model / need).is_file():
            raise SystemExit(f"{model}: no {need} — not an nnU-Net model folder (expected "
                             f"dataset.json, plans.json, fold_{fold}/{checkpoint})")
    ck = model / f"fold_{fold}" / checkpoint
    if not ck.is_file():
        have = sorted(p.name for p in ck.parent.glob("*.pth")) if ck.parent.is_dir() else []
        raise SystemExit(f"{ck}: missing (training not finished?); "
                         f"fold_{fold} has {', '.join(have) or 'no checkpoints'}. "
                         f"Use --checkpoint to pick another one.")
    return ck


def timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t


def stock_predictor(model: Path, fold: str, checkpoint: str, device: torch.device):
    """Stock nnUNetPredictor on ``model`` (our trainer made discoverable via nnUNet_extTrainer)."""
    os.environ["nnUNet_extTrainer"] = trainer_dir()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=device,
                           perform_everything_on_device=device.type == "cuda", allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model), use_folds=(int(fold) if fold.isdigit() else fold,),
                                              checkpoint_name=checkpoint)
    return pred


def run_case(img: sitk.Image, stock, fast: dict, gt: np.ndarray | None) -> dict:
    """All predictions of one case and their comparisons."""
    arr = sitk.GetArrayFromImage(img).astype(np.float32)[None]
    ref, t_stock = timed(stock.predict_single_npy_array, arr, {"spacing": list(reversed(img.GetSpacing()))})
    row = {"stock_s": t_stock, "modes": {}}
    if gt is not None:
        row["stock_vs_gt"] = dice_per_class(ref, gt, sorted(set(np.unique(gt).tolist()) - {0}))
    for mode, (ns, sk) in fast.items():
        res_ns, t_ns = timed(ns.run, img)
        res_sk, t_sk = timed(sk.run, img)
        b, c = sitk.GetArrayFromImage(res_ns.labels), sitk.GetArrayFromImage(res_sk.labels)
        m = {"dice": dice_per_class(b, ref), "unchanged": foreground_unchanged(b, c), "noskip_s": t_ns,
             "skip_s": t_sk, "windows": res_sk.stats["windows"]}
        if gt is not None:
            m["vs_gt"] = dice_per_class(b, gt, sorted(set(np.unique(gt).tolist()) - {0}))
        row["modes"][mode] = m
    return row


def _mean(d: dict) -> float:
    return float(np.mean(list(d.values()))) if d else float("nan")


def render(rows: dict[str, dict], modes: list[str], header: list[str]) -> str:
    """Markdown: per case x mode, then per class over cases, then an overall line per mode."""
    gt = any("stock_vs_gt" in r for r in rows.values())
    lines = header + ["", "## Per case", "",
                      "| case | mode | Dice (b) vs stock per class | mean | skip: fg unchanged | stock s | "
                      "no-skip s (x) | skip s (x) | windows skipped" + (" | stock vs truth | (b) vs truth" if gt else "")
                      + " |", "|---" * (9 + 2 * gt) + "|"]
    for case, r in rows.items():
        if "error" in r:
            lines.append(f"| {case} | error: {r['error']} |")
            continue
        for mode in modes:
            m = r["modes"][mode]
            per = ", ".join(f"{c}: {v:.4f}" for c, v in m["dice"].items()) or "(no foreground)"
            w = m["windows"]
            line = (f"| {case} | {mode} | {per} | {_mean(m['dice']):.4f} | {100 * m['unchanged']:.3f}% | "
                    f"{r['stock_s']:.2f} | {m['noskip_s']:.2f} ({r['stock_s'] / m['noskip_s']:.1f}x) | "
                    f"{m['skip_s']:.2f} ({r['stock_s'] / m['skip_s']:.1f}x) | "
                    f"{w['windows_skipped']} / {w['windows_total']} ({w['planes_skipped']} of "
                    f"{w['planes_total']} planes, {w['planes_grown']} grown)")
            if gt:
                line += f" | {_mean(r.get('stock_vs_gt', {})):.4f} | {_mean(m.get('vs_gt', {})):.4f}"
            lines.append(line + " |")
    ok = [r for r in rows.values() if "error" not in r]
    classes = sorted({c for r in ok for m in r["modes"].values() for c in m["dice"]})
    lines += ["", "## Per class (mean over the cases where the class is present in (a) or (b))", "",
              "| class | " + " | ".join(f"{m}: Dice (b) vs stock" for m in modes)
              + (" | stock vs truth | " + " | ".join(f"{m} (b) vs truth" for m in modes) if gt else "") + " |",
              "|---" * (1 + len(modes) + gt * (1 + len(modes))) + "|"]
    for c in classes:
        vals = [[r["modes"][m]["dice"][c] for r in ok if c in r["modes"][m]["dice"]] for m in modes]
        if gt:
            vals.append([r["stock_vs_gt"][c] for r in ok if c in r.get("stock_vs_gt", {})])
            vals += [[r["modes"][m]["vs_gt"][c] for r in ok if c in r["modes"][m].get("vs_gt", {})] for m in modes]
        lines.append(f"| {c} {CLASS_NAMES.get(c, c)} | "
                     + " | ".join(f"{np.mean(v):.4f} (n={len(v)})" if v else "-" for v in vals) + " |")
    lines += ["", "## Overall", "",
              "| mode | mean Dice (b) vs stock (present classes, mean over cases) | skip: fg unchanged (mean over cases) | "
              "stock s | no-skip s (x) | skip s (x) | windows skipped" + (" | stock vs truth | (b) vs truth" if gt else "")
              + " |", "|---" * (7 + 2 * gt) + "|"]
    for mode in modes:
        ms = [r["modes"][mode] for r in ok]
        if not ms:
            continue
        st, ns, sk = (sum(x) for x in ([r["stock_s"] for r in ok], [m["noskip_s"] for m in ms], [m["skip_s"] for m in ms]))
        line = (f"| {mode} | {np.mean([_mean(m['dice']) for m in ms if m['dice']]):.4f} | "
                f"{100 * np.mean([m['unchanged'] for m in ms]):.3f}% | {st:.2f} | {ns:.2f} ({st / ns:.1f}x) | "
                f"{sk:.2f} ({st / sk:.1f}x) | {sum(m['windows']['windows_skipped'] for m in ms)} / "
                f"{sum(m['windows']['windows_total'] for m in ms)}")
        if gt:
            line += (f" | {np.mean([_mean(r['stock_vs_gt']) for r in ok if 'stock_vs_gt' in r]):.4f} | "
                     f"{np.mean([_mean(m['vs_gt']) for m in ms if 'vs_gt' in m]):.4f}")
        lines.append(line + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="nnU-Net model folder with fold_X/checkpoint_final.pth")
    ap.add_argument("--images", type=Path, required=True, help="folder of CT images (case_0000.nii.gz) or one file")
    ap.add_argument("--labels", type=Path, default=None, help="optional ground-truth folder (case.nii.gz)")
    ap.add_argument("--fold", default="0")
    ap.add_argument("--checkpoint", default="checkpoint_final.pth")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--modes", default="fast,linear,nearest,stock", help=f"FastPredictor modes, comma-separated ({', '.join(MODES)})")
    ap.add_argument("--max-cases", type=int, default=0, help="only the first N cases (0: all)")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/predictor_equivalence.md"))
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_input_outputs({"--out": args.out}, [args.images, args.labels], args.model, overwrite=args.overwrite)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := [m for m in modes if m not in MODES]:
        raise SystemExit(f"--modes: unknown {bad}; choose from {sorted(MODES)}")
    # stock's logits export sets torch's thread count to nnUNet_def_n_proc (8 by default): match ours
    nnunet_process(args.device, def_n_proc=torch.get_num_threads())
    device = resolve_device(args.device)
    check_model_folder(args.model, args.fold, args.checkpoint)
    cases = collect_inputs(args.images)
    if args.max_cases:
        cases = cases[:args.max_cases]
    if not cases:
        raise SystemExit(f"{args.images}: no images")
    truth = list_cases(args.labels) if args.labels else {}

    stock = stock_predictor(args.model, args.fold, args.checkpoint, device)
    fast = {m: tuple(FastPredictor(args.model, device=device.type, folds=[args.fold], checkpoint=args.checkpoint,
                                   skip_windows=sk, **MODES[m]) for sk in (False, True)) for m in modes}
    warm = read_image(cases[0][1])  # warm-up of every predictor (kernels, caches), not timed
    stock.predict_single_npy_array(sitk.GetArrayFromImage(warm).astype(np.float32)[None],
                                   {"spacing": list(reversed(warm.GetSpacing()))})
    for pair in fast.values():
        for p in pair:
            p.run(warm)

    rows: dict[str, dict] = {}
    for case, path in cases:
        try:
            img = read_image(path)
            gt = sitk.GetArrayFromImage(read_image(truth[case])) if case in truth else None
            rows[case] = run_case(img, stock, fast, gt)
            r = rows[case]
            log.info("%s: stock %.2f s; %s", case, r["stock_s"], "; ".join(
                f"{m} mean Dice {_mean(v['dice']):.4f}, unchanged {100 * v['unchanged']:.3f}%"
                for m, v in r["modes"].items()))
        except (InputError, RuntimeError, ValueError) as e:
            log.error("%s: %s", case, e)
            rows[case] = {"error": str(e).replace("|", "/")}

    ck = load_checkpoint(args.model / f"fold_{args.fold}" / args.checkpoint)
    header = [
        "# Predictor equivalence: stock nnUNetPredictor vs FastPredictor (trained model)", "",
        "Command: `python " + " ".join(["bench/predictor_equivalence.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
        "", machine_line(str(device)).replace("machine: ", "Machine: ", 1) + ".", "",
        f"Model: `{args.model}` fold {args.fold} `{args.checkpoint}` (trainer {ck.get('trainer_name')}, "
        f"configuration {ck.get('init_args', {}).get('configuration')}, epoch {ck.get('current_epoch')}). "
        f"Cases: {len(cases)} from `{args.images}`. No mirroring; tile step 0.5; warm process.", "",
        "(a) stock, (b) FastPredictor no skip, (c) FastPredictor with skipping. Modes: " + "; ".join(
            f"`{m}` = {MODES[m] or 'defaults'}" for m in modes) + ".",
    ]
    text = render(rows, modes, header)
    if args.out.is_file() and "\n## Notes" in (old := args.out.read_text()):
        text += old[old.index("\n## Notes"):]  # hand-written reading notes survive a rerun
    write_report(text, args.out, overwrite=args.overwrite)
    return 1 if any("error" in r for r in rows.values()) else 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "predictor_equivalence"))
