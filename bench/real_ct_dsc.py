"""Per-class DSC of a phantom-trained model on the shared real CT (issue 28 item 5).

The shared CT (``../shared/data/ct/ts_example_ct_sm.nii.gz``: a real upper-abdomen CT, 3 mm,
unenhanced) has organ labels made by the TotalSegmentator model (a silver standard: agreement, not
true accuracy; see ``../shared/data/README.md``).  The CT is used only to measure: nothing in the
phantom generator is fitted to it.  The model predicts it the way ``flareseg predict`` does
(:class:`flareseg.inference.predictor.FastPredictor`, default settings, CPU) and each FLARE class
is scored against those labels.  The report is a markdown table per class plus the mean over the
classes present in the reference and the issue's goal (liver, spleen, kidneys >= 0.5)::

    python -m bench.real_ct_dsc --model WORK/stage-1-fine/nnUNet_results/Dataset823_PhantomDemo/FlareSegTrainer__nnUNetPlans__fine
    python -m bench.real_ct_dsc --model WORK/stage-6-ship/model --json dsc.json
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench._common import (add_overwrite_arg, machine_line, nnunet_process, refuse_input_outputs, run_bench,
                           write_json_report, write_report)
from flareseg.evaluation.metrics import class_dsc
from flareseg.labels import CLASS_NAMES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
IMAGE = SHARED / "ts_example_ct_sm.nii.gz"
LABELS = SHARED / "ts_example_ct_sm_seg_flare.nii.gz"
GOAL_CLASSES = (1, 3, 2, 13)     # liver, spleen, right and left kidney: the DSC >= 0.5 goal
GOAL = 0.5


def read_pair(image: Path, labels: Path) -> tuple[sitk.Image, sitk.Image]:
    """The CT and its labels through flareseg's verified reader (a truncated or corrupt file is an
    :class:`flareseg.errors.InputError`, not zeros), the labels on the CT's grid (else an
    InputError naming both): a DSC of misaligned grids would be a number without meaning."""
    from flareseg.errors import InputError
    from flareseg.io import Geometry, geometry_mismatch, read_image
    ct, ref = read_image(image), read_image(labels)
    why = geometry_mismatch(Geometry.of(ct), Geometry.of(ref))
    if why:
        raise InputError(labels, f"not on the grid of {image}: {'; '.join(why)}")
    return ct, ref


def summary(scores: dict[int, dict]) -> dict:
    """Mean DSC over the classes in the reference, and the goal classes' minimum."""
    present = [s["dsc"] for s in scores.values() if s["ref_voxels"]]
    goal = [scores[c]["dsc"] or 0.0 for c in GOAL_CLASSES if scores[c]["ref_voxels"]]
    return {"mean_present": float(np.mean(present)) if present else None,
            "goal_min": min(goal) if goal else None, "goal_met": bool(goal) and min(goal) >= GOAL}


def table(scores: dict[int, dict]) -> list[str]:
    """Markdown rows: class, reference voxels, predicted voxels, DSC."""
    rows = ["| class | reference voxels | predicted voxels | DSC |", "|---|---:|---:|---:|"]
    for c, s in scores.items():
        d = "–" if s["dsc"] is None else f"{s['dsc']:.3f}"
        rows.append(f"| {c} {CLASS_NAMES[c]} | {s['ref_voxels']} | {s['pred_voxels']} | {d} |")
    m = summary(scores)
    rows.append(f"| mean over the {sum(1 for s in scores.values() if s['ref_voxels'])} classes in the "
                f"reference | | | {m['mean_present']:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="nnU-Net model folder (stage-1/5 results or an exported model)")
    ap.add_argument("--fold", default="0")
    ap.add_argument("--checkpoint", default="checkpoint_final.pth")
    ap.add_argument("--image", type=Path, default=IMAGE)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--json", type=Path, help="write the per-class numbers as JSON")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    refuse_input_outputs({"--out": args.out, "--json": args.json}, (args.image, args.labels), args.model,
                         overwrite=args.overwrite)
    for p in (args.image, args.labels):
        if not p.is_file():
            raise SystemExit(f"{p}: missing (the shared real CT; see ../shared/data/README.md)")
    image, labels = read_pair(args.image, args.labels)
    nnunet_process("cpu")
    from flareseg.inference.predictor import FastPredictor
    predictor = FastPredictor(args.model, device="cpu", folds=[args.fold], checkpoint=args.checkpoint)
    t = time.perf_counter()
    pred = sitk.GetArrayFromImage(predictor.predict(image))
    seconds = time.perf_counter() - t
    ref = sitk.GetArrayFromImage(labels)
    scores = class_dsc(pred, ref)
    m = summary(scores)
    text = "\n".join([
        f"Model `{args.model}` fold {args.fold} `{args.checkpoint}` on `{args.image.name}` "
        f"({'x'.join(map(str, image.GetSize()))}, {image.GetSpacing()[0]:g} mm) vs the TotalSegmentator "
        f"labels; {seconds:.1f} s.", "", *table(scores), "",
        f"Goal (liver, spleen, kidneys DSC >= {GOAL}): {'met' if m['goal_met'] else 'not met'} "
        f"(lowest {m['goal_min']:.3f}).", "", machine_line("cpu")])
    write_report(text, args.out, overwrite=args.overwrite)
    write_json_report({"model": str(args.model), "scores": scores, **m}, args.json, args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "real_ct_dsc"))
