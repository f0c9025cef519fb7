"""Why a phantom-trained model misses a real organ (issue 28 item 5): two probes, one command.

1. **Phases** (``--phases N``): N fresh phantoms of the model's generator config, each rendered in
   every contrast phase (the same patients, only the HU change: ``generate_case(phase=...)``),
   scored per phase.  Answers "does the model know the unenhanced organs on phantoms?".
2. **Versions of the real CT** (always): the shared real CT (``bench.real_ct_dsc``'s image) with
   its own labels used to move one thing at a time: a whole-scan CT-number offset, the kidneys or
   the spleen moved to the phantoms' unenhanced centre (the midpoint of ``ADULT_ORGAN_HU``'s plain
   range) with their texture kept or flattened, the kidneys flattened at the portal-venous centre.
   Each version is scored as ``bench.real_ct_dsc`` scores the CT as it is.  If a real organ is
   missed even when it reads the phantoms' HU, what the model misses is its shape and
   surroundings, not its intensity.

3. **Swaps** (``--swap N``): is it the organ or its surroundings?  Each of the spleen and the
   kidneys with a ``--margin`` of its surroundings is moved, by translation in physical space, onto
   the same organ of the other kind of scan: the real organ into N fresh plain-phase phantoms, a
   phantom organ into the real CT.  Scored inside the pasted region only, against the pasted
   organ's own label, next to both organs where they are.  A real organ missed in phantom
   surroundings, while a phantom organ is found in the real surroundings, says that what the model
   misses is the organ itself (its shape and texture within the margin), not the scan around it.

These are diagnostics: the CT is only measured, the phantoms are never fitted to it::

    python -m bench.real_ct_probe --model WORK/stage-1-fine/nnUNet_results/Dataset823_PhantomDemo/FlareSegTrainer__nnUNetPlans__fine --phases 2 --json probe.json
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from bench._common import (add_overwrite_arg, machine_line, nnunet_process, refuse_input_outputs, run_bench,
                           write_json_report, write_report)
from bench.real_ct_dsc import GOAL_CLASSES, IMAGE, LABELS, read_pair
from flareseg.data.phantom_anatomy import ADULT_ORGAN_HU, PHASES
from flareseg.evaluation.metrics import class_dsc, dice
from flareseg.labels import CLASS_NAMES

KIDNEYS = (2, 13)
SPLEEN = 3
OFFSET_HU = 15.0          # a whole-scan CT-number offset (the phantoms draw +-12, CALIBRATION_HU)
NOISE_SD = 11.0           # flattened organs get white noise of this SD (the shared CT's liver residual)


def centre(c: int, phase: str) -> float:
    """Midpoint of the published HU range that the adult phantoms draw class ``c`` from in ``phase``."""
    lo, hi = ADULT_ORGAN_HU[c][PHASES.index(phase)]
    return (lo + hi) / 2.0


def moved(hu: np.ndarray, labels: np.ndarray, classes, target: float) -> np.ndarray:
    """Each class's voxels shifted so that their median reads ``target``; texture kept."""
    out = hu.astype(np.float32).copy()
    for c in classes:
        m = labels == c
        if m.any():
            out[m] += np.float32(target - np.median(hu[m]))
    return out


def flattened(hu: np.ndarray, labels: np.ndarray, classes, target: float, noise: np.ndarray) -> np.ndarray:
    """Each class's voxels replaced by ``target`` plus ``noise``: the organ's texture removed."""
    out = hu.astype(np.float32).copy()
    m = np.isin(labels, list(classes))
    out[m] = np.float32(target) + noise[m]
    return out


def versions(hu: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The probe's versions of a CT ``hu`` (float HU, ``(Z, Y, X)``) made with its ``labels``."""
    noise = np.random.default_rng(seed).normal(0.0, NOISE_SD, hu.shape).astype(np.float32)
    kp, sp, kv = centre(2, "plain"), centre(SPLEEN, "plain"), centre(2, "portal")
    return {
        "as it is": hu.astype(np.float32),
        f"whole scan {OFFSET_HU:+.0f} HU": hu.astype(np.float32) + np.float32(OFFSET_HU),
        f"kidneys at the phantoms' unenhanced {kp:.0f} HU, texture kept": moved(hu, labels, KIDNEYS, kp),
        f"kidneys flat at {kp:.0f} HU": flattened(hu, labels, KIDNEYS, kp, noise),
        f"spleen at the phantoms' unenhanced {sp:.1f} HU, texture kept": moved(hu, labels, (SPLEEN,), sp),
        f"kidneys flat at the portal-venous {kv:.0f} HU": flattened(hu, labels, KIDNEYS, kv, noise),
    }


def goal_dsc(pred: np.ndarray, ref: np.ndarray) -> dict[int, float]:
    """DSC of the goal classes (liver, spleen, kidneys); 0 where the prediction has none."""
    s = class_dsc(pred, ref)
    return {c: float(s[c]["dsc"] or 0.0) for c in GOAL_CLASSES}


def rows(title: str, results: dict[str, dict[int, float]]) -> list[str]:
    """Markdown table: one row per version (or phase), one column per goal class."""
    head = f"| {title} | " + " | ".join(CLASS_NAMES[c] for c in GOAL_CLASSES) + " |"
    out = [head, "|---|" + "---:|" * len(GOAL_CLASSES)]
    for name, d in results.items():
        out.append(f"| {name} | " + " | ".join(f"{d[c]:.3f}" for c in GOAL_CLASSES) + " |")
    return out


def patients(n: int, config: Path, seed: int, phases=PHASES):
    """``n`` fresh patients of ``config``'s phantom generator (without tumors), each in every phase of
    ``phases``: yields (phase, image, labels image); patient ``i`` is the same in every phase."""
    from flareseg.config import load_config
    from flareseg.data.phantom_case import generate_case
    cfg = load_config(config).data.phantoms
    for i in range(n):
        for phase in phases:
            img, lab, geo, _ = generate_case(np.random.default_rng([seed, i]), cfg, n_tumors=0, phase=phase)
            yield phase, geo.apply(sitk.GetImageFromArray(img)), geo.apply(sitk.GetImageFromArray(lab.astype(np.uint8)))


def phase_cases(n: int, config: Path, seed: int):
    """:func:`patients` in every phase: yields (phase, image, labels array)."""
    for phase, image, labels in patients(n, config, seed):
        yield phase, image, sitk.GetArrayFromImage(labels)


def centroid_mm(labels: sitk.Image, c: int) -> np.ndarray:
    """Physical centre (mm, x y z) of class ``c``'s voxels in a label image."""
    idx = np.argwhere(sitk.GetArrayFromImage(labels) == c).mean(axis=0)[::-1]
    return np.asarray(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))


def around(labels: sitk.Image, c: int, margin_mm: float) -> np.ndarray:
    """Voxels of class ``c`` and those within ``margin_mm`` of it (``(Z, Y, X)`` bool)."""
    from scipy import ndimage
    organ = sitk.GetArrayFromImage(labels) == c
    return ndimage.distance_transform_edt(~organ, sampling=labels.GetSpacing()[::-1]) <= margin_mm


def paste(src: sitk.Image, src_labels: sitk.Image, dst: sitk.Image, dst_labels: sitk.Image, c: int,
          margin_mm: float) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """``src``'s organ ``c`` with ``margin_mm`` of its surroundings, translated in physical space so
    that its centre lies on ``dst``'s organ ``c``, written over ``dst`` (linear for the HU, nearest
    for labels, on ``dst``'s grid).  Returns the composite image, the pasted region and the pasted
    labels (``(Z, Y, X)`` arrays on ``dst``'s grid; 0 outside ``src``)."""
    shift = centroid_mm(dst_labels, c) - centroid_mm(src_labels, c)
    move = sitk.TranslationTransform(3, [float(v) for v in -shift])          # dst point -> src point
    region_src = sitk.GetImageFromArray(around(src_labels, c, margin_mm).astype(np.uint8))
    region_src.CopyInformation(src_labels)
    hu = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(src, sitk.sitkFloat32), dst, move, sitk.sitkLinear, -1000.0))
    region = sitk.GetArrayFromImage(sitk.Resample(region_src, dst, move, sitk.sitkNearestNeighbor, 0)) > 0
    truth = sitk.GetArrayFromImage(sitk.Resample(src_labels, dst, move, sitk.sitkNearestNeighbor, 0))
    out = sitk.GetArrayFromImage(dst).astype(np.float32)
    out[region] = hu[region]
    image = sitk.GetImageFromArray(np.round(out).astype(np.int16))
    image.CopyInformation(dst)
    return image, region, truth


def dsc_within(pred: np.ndarray, truth: np.ndarray, region: np.ndarray, c: int) -> float:
    """DSC of class ``c`` counted inside ``region`` only (0 when neither has it there)."""
    p, t = (pred == c) & region, (truth == c) & region
    return dice(p, t) if p.any() or t.any() else 0.0


SWAP_CLASSES = (SPLEEN, *KIDNEYS)
SWAPS = ("real organ in the real CT", "phantom organ in its phantom", "real organ in a phantom",
         "phantom organ in the real CT")


def score_swaps(predict: Callable[[sitk.Image], np.ndarray], real: sitk.Image, real_labels: sitk.Image,
                phantoms, margin_mm: float) -> dict[str, dict[int, float]]:
    """Mean DSC per swap (:data:`SWAPS`) and class over ``phantoms`` ((image, labels) pairs of
    SimpleITK images), each scored inside the region around the organ (:func:`around`)."""
    acc: dict[str, dict[int, list[float]]] = {k: {c: [] for c in SWAP_CLASSES} for k in SWAPS}
    ref = sitk.GetArrayFromImage(real_labels)
    as_is = predict(real)
    for c in SWAP_CLASSES:
        acc[SWAPS[0]][c].append(dsc_within(as_is, ref, around(real_labels, c, margin_mm), c))
    for image, labels in phantoms:
        lab = sitk.GetArrayFromImage(labels)
        pred = predict(image)
        for c in SWAP_CLASSES:
            acc[SWAPS[1]][c].append(dsc_within(pred, lab, around(labels, c, margin_mm), c))
            for k, (src, src_lab, dst, dst_lab) in ((SWAPS[2], (real, real_labels, image, labels)),
                                                    (SWAPS[3], (image, labels, real, real_labels))):
                composite, region, truth = paste(src, src_lab, dst, dst_lab, c, margin_mm)
                acc[k][c].append(dsc_within(predict(composite), truth, region, c))
    return {k: {c: float(np.mean(v)) for c, v in d.items()} for k, d in acc.items()}


def score_phases(predict: Callable[[sitk.Image], np.ndarray], cases) -> dict[str, dict[int, float]]:
    """Mean goal-class DSC per phase over ``cases`` from :func:`phase_cases`."""
    acc: dict[str, list[dict[int, float]]] = {}
    for phase, image, lab in cases:
        acc.setdefault(phase, []).append(goal_dsc(predict(image), lab))
    return {p: {c: float(np.mean([d[c] for d in v])) for c in GOAL_CLASSES} for p, v in acc.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="nnU-Net model folder (stage-1/5 results or an exported model)")
    ap.add_argument("--fold", default="0")
    ap.add_argument("--checkpoint", default="checkpoint_final.pth")
    ap.add_argument("--phases", type=int, default=0, metavar="N",
                    help="also score N fresh phantoms in each contrast phase (about 35 s per phantom and phase on 2 cores, Intel Xeon)")
    ap.add_argument("--swap", type=int, default=0, metavar="N",
                    help="also swap the spleen and kidneys with their surroundings between the real CT and N fresh "
                         "plain-phase phantoms (about 4 min per phantom on 2 cores, Intel Xeon)")
    ap.add_argument("--margin", type=float, default=15.0, help="--swap: mm of surroundings moved with the organ")
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="generator config of --phases and --swap")
    ap.add_argument("--phantom-seed", type=int, default=777, help="--phases' and --swap's patients (not the demo's data seed 0)")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--json", type=Path, help="write the numbers as JSON")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    if args.phases < 0 or args.swap < 0 or not args.margin >= 0:
        ap.error("--phases and --swap take a count >= 0, --margin a distance >= 0 mm")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    refuse_input_outputs({"--out": args.out, "--json": args.json}, (IMAGE, LABELS, args.config), args.model,
                         overwrite=args.overwrite)
    for p in (IMAGE, LABELS):
        if not p.is_file():
            raise SystemExit(f"{p}: missing (the shared real CT; see ../shared/data/README.md)")
    nnunet_process("cpu")
    from flareseg.inference.predictor import FastPredictor
    predictor = FastPredictor(args.model, device="cpu", folds=[args.fold], checkpoint=args.checkpoint)

    def predict(image: sitk.Image) -> np.ndarray:
        return sitk.GetArrayFromImage(predictor.predict(image))

    t = time.perf_counter()
    image, labels = read_pair(IMAGE, LABELS)
    ref = sitk.GetArrayFromImage(labels)
    real = {}
    for name, hu in versions(sitk.GetArrayFromImage(image).astype(np.float32), ref).items():
        v = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
        v.CopyInformation(image)
        real[name] = goal_dsc(predict(v), ref)
    phases = score_phases(predict, phase_cases(args.phases, args.config, args.phantom_seed)) if args.phases else {}
    plain = ((im, lab) for _, im, lab in patients(args.swap, args.config, args.phantom_seed, phases=("plain",)))
    swaps = score_swaps(predict, image, labels, plain, args.margin) if args.swap else {}
    lines = [f"Model `{args.model}` fold {args.fold} `{args.checkpoint}`; {time.perf_counter() - t:.0f} s.", "",
             *rows("version of the real CT", real)]
    if phases:
        lines += ["", f"{args.phases} fresh phantom(s) of `{args.config}` (seed {args.phantom_seed}), "
                  "the same patients in every phase, mean DSC:", "", *rows("phase", phases)]
    if swaps:
        lines += ["", f"Swaps with {args.margin:g} mm of surroundings, {args.swap} fresh plain-phase phantom(s) "
                  f"(seed {args.phantom_seed}), mean DSC inside the pasted region:", "",
                  "| organ, where | " + " | ".join(CLASS_NAMES[c] for c in SWAP_CLASSES) + " |",
                  "|---|" + "---:|" * len(SWAP_CLASSES),
                  *(f"| {k} | " + " | ".join(f"{d[c]:.3f}" for c in SWAP_CLASSES) + " |" for k, d in swaps.items())]
    write_report("\n".join([*lines, "", machine_line("cpu")]), args.out, overwrite=args.overwrite)
    write_json_report({"model": str(args.model), "real_ct": real, "phases": phases, "swaps": swaps,
                       "swap_margin_mm": args.margin if swaps else None}, args.json, args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "real_ct_probe"))
