"""Window skipping where it can act: scans that reach beyond the abdomen (issue 28 item 4).

Writes validation phantoms of a config (``data.phantoms``, ``anatomy: adult`` for a real-size
body) once per z margin — the same patients, scanned over the abdomen alone (margin 0) and with
``MARGIN`` mm of chest above and pelvis below — and predicts each with the model twice through
:class:`flareseg.inference.predictor.FastPredictor`: with window skipping (the default) and with
``--no-skip``.  Per case and margin: windows and planes skipped, seconds of each (median of
``--repeats`` interleaved runs), and the per-class Dice of the skipped labels against the
``--no-skip`` labels (and of both against the phantom's truth)::

    python -m bench.skipping_evidence --config configs/demo.yaml \\
        --model WORK/stage-1-fine/nnUNet_results/Dataset823_PhantomDemo/FlareSegTrainer__nnUNetPlans__fine \\
        --cases 4 --margins 0 150 --out docs/benchmarks/skipping_evidence.md
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench._common import (add_overwrite_arg, interleaved, machine_line, nnunet_process,
                           refuse_input_outputs, run_bench, write_json_report, write_report)
from flareseg.evaluation.metrics import dice_per_class
from flareseg.io import read_image
from flareseg.labels import CLASS_NAMES

log = logging.getLogger("bench.skipping_evidence")


def write_long_phantoms(config: str, out: Path, cases: int, seed: int, margin: float) -> Path:
    """Validation phantoms of ``config`` with ``z_margin_mm = margin`` into ``out``; their folder."""
    from flareseg.config import load_config
    from flareseg.data.phantoms import write_phantoms
    ph = replace(load_config(config).data.phantoms, labeled=0, tumor_only=0, unlabeled=0,
                 validation=cases, seed=seed, z_margin_mm=float(margin))
    write_phantoms(out, ph, progress=False)
    return out


def run_case(path: Path, truth: Path | None, skip, noskip, repeats: int) -> dict:
    """Both predictions of one case, their timings (median of ``repeats``), windows and Dice."""
    img = read_image(path)
    res = {}
    times = interleaved({"skip": lambda: res.__setitem__("skip", skip.run(img)),
                         "noskip": lambda: res.__setitem__("noskip", noskip.run(img))}, repeats, rotate=True)
    a, b = (sitk.GetArrayFromImage(res[k].labels) for k in ("skip", "noskip"))
    row = {"shape": list(a.shape), "spacing": list(img.GetSpacing()), "seconds": times,
           "windows": res["skip"].stats["windows"], "dice_skip_vs_noskip": dice_per_class(a, b),
           "voxels_changed": int((a != b).sum())}
    if truth is not None:
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(truth)))
        classes = sorted(set(np.unique(gt).tolist()) - {0})
        row["skip_vs_truth"] = dice_per_class(a, gt, classes)
        row["noskip_vs_truth"] = dice_per_class(b, gt, classes)
    return row


def _fmt_dice(d: dict[int, float]) -> str:
    return ", ".join(f"{c}: {v:.4f}" for c, v in sorted(d.items())) or "no foreground"


def render(rows: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown: one row per (run, case), one total row per run (a z margin and a skip threshold),
    and per class Dice."""
    out = ["| z margin, skip threshold | case | scan length | windows skipped | planes skipped | no-skip s | skip s | "
           "time saved | voxels changed | Dice skip vs no-skip (classes present) |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for margin, cases in rows.items():
        tot = {"w": 0, "ws": 0, "ns": 0.0, "sk": 0.0}
        for case, r in cases.items():
            w, s = r["windows"], r["seconds"]
            tot["w"] += w["windows_total"]
            tot["ws"] += w["windows_skipped"]
            tot["ns"] += s["noskip"]
            tot["sk"] += s["skip"]
            length = r["shape"][0] * r["spacing"][2]
            out.append(f"| {margin} | {case} | {length:.0f} mm | {w['windows_skipped']} / "
                       f"{w['windows_total']} ({100 * w['windows_skipped'] / max(w['windows_total'], 1):.0f} %) | "
                       f"{w['planes_skipped']} / {w['planes_total']} (grown {w['planes_grown']}) | "
                       f"{s['noskip']:.2f} | {s['skip']:.2f} | {100 * (1 - s['skip'] / s['noskip']):.0f} % | "
                       f"{r['voxels_changed']} | {_fmt_dice(r['dice_skip_vs_noskip'])} |")
        out.append(f"| {margin} | **all** | | **{tot['ws']} / {tot['w']} "
                   f"({100 * tot['ws'] / max(tot['w'], 1):.0f} %)** | | {tot['ns']:.2f} | {tot['sk']:.2f} | "
                   f"**{100 * (1 - tot['sk'] / tot['ns']):.0f} %** | | |")
    out += ["", "Per class, mean over cases where the class is present (skip vs `--no-skip`; "
            "each against the truth):", "",
            "| z margin, skip threshold | class | Dice skip vs no-skip | no-skip vs truth | skip vs truth |", "|---:|---|---:|---:|---:|"]
    for margin, cases in rows.items():
        classes = sorted({c for r in cases.values() for c in r["dice_skip_vs_noskip"]})
        for c in classes:
            def mean(key: str) -> str:
                v = [r[key][c] for r in cases.values() if c in r.get(key, {})]
                return f"{np.mean(v):.4f} (n={len(v)})" if v else "–"
            out.append(f"| {margin} | {c} {CLASS_NAMES[c]} | {mean('dice_skip_vs_noskip')} | "
                       f"{mean('noskip_vs_truth')} | {mean('skip_vs_truth')} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="config whose data.phantoms make the scans (e.g. configs/demo.yaml)")
    ap.add_argument("--model", type=Path, required=True, help="nnU-Net model folder")
    ap.add_argument("--fold", default="0")
    ap.add_argument("--checkpoint", default="checkpoint_final.pth")
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--seed", type=int, default=101, help="phantom seed (not the training set's)")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 150.0], help="z margins, mm")
    ap.add_argument("--thresholds", type=int, nargs="+", default=[1],
                    help="inference.skip_threshold values: foreground voxels the indicator windows of a "
                         "plane may hold and the plane still be skipped below (1: any foreground keeps it)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per predictor and case (median)")
    ap.add_argument("--scratch", type=Path, help="folder for the phantoms (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="write the markdown report here too")
    ap.add_argument("--json", type=Path, help="write the per-case numbers as JSON")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_input_outputs({"--out": args.out, "--json": args.json}, [args.config], args.model, overwrite=args.overwrite)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    nnunet_process("cpu")
    from flareseg.cases import list_cases
    from flareseg.inference.predictor import FastPredictor
    noskip = FastPredictor(args.model, device="cpu", folds=[args.fold], checkpoint=args.checkpoint,
                           skip_windows=False)
    skips = {t: FastPredictor(args.model, device="cpu", folds=[args.fold], checkpoint=args.checkpoint,
                              skip_windows=True, skip_threshold=t) for t in args.thresholds}
    rows: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.scratch or Path(tmp)
        for margin in args.margins:
            ph = write_long_phantoms(args.config, scratch / f"margin{margin:g}", args.cases, args.seed, margin)
            truth = list_cases(ph / "labelsVal", channel_suffix=False)
            for t, skip in skips.items():
                key = f"{margin:g} mm, {t} voxel{'s' if t > 1 else ''}"
                rows[key] = {}
                for case, path in list_cases(ph / "imagesVal").items():
                    rows[key][case] = r = run_case(path, truth.get(case), skip, noskip, args.repeats)
                    log.info("%s %s: %d / %d windows skipped, %.2f s vs %.2f s; indicator foreground "
                             "per plane %s", key, case, r["windows"]["windows_skipped"],
                             r["windows"]["windows_total"], r["seconds"]["skip"], r["seconds"]["noskip"],
                             r["windows"].get("indicator_foreground"))
    cmd = "python -m bench.skipping_evidence " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([f"Command: `{cmd}`", "",
                      f"Model `{args.model}` fold {args.fold} `{args.checkpoint}`; phantoms of `{args.config}` "
                      f"(seed {args.seed}, {args.cases} cases, the same patients at every margin); "
                      f"{machine_line('cpu')}.", "", *render(rows)])
    write_report(text, args.out, overwrite=args.overwrite)
    write_json_report(rows, args.json, args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "skipping_evidence"))
