"""CutMix paste rate as training sees it, for each shipped config, without a pipeline run.

    python -m bench.cutmix_rate [--configs configs/tiny.yaml configs/demo.yaml configs/flare23.yaml]
                                [--crops 10] [--seed 0] [--scratch DIR] [--out docs/benchmarks/cutmix_rate.md]

For each config: phantoms at the config's phantom settings (a config that reads real folders, like
``flare23.yaml``, gets the default phantom settings at its own coarse geometry), resampled to
``coarse.spacing``; a CTO pool built by :func:`flareseg.cto.pool.build_pool` with the config's
``cto``/``cleaning`` keys and nnU-Net's CT normalisation (foreground percentiles and moments of the
labelled voxels, nnU-Net's ``CTNormalization`` class); then the targets training pastes into: every
case whose label type lacks tumor (organ-only ground truth, and the unlabeled cases with their
hidden organ labels standing in for pseudo labels), ``--crops`` crops each, cut the way nnU-Net's
loader cuts them (nnU-Net's initial patch size for the coarse patch, a third centred on annotated
foreground, nnU-Net's padding), handed to the trainer's own hook
(:class:`flareseg.nnunet.trainer.CutMixBeforeTransforms`: body threshold above the clip floor,
centres in the central patch box) and then nnU-Net's training transforms.

Reported per config: eligible samples, pasted, pasted whose tumor reaches the final augmented patch,
no fitting location, the paste rate, and the air carried: share of pasted voxels (box minus the
object's outer air) that are air in HU (< -500, the same objects kept in HU) where the target crop
was body (HU body mask) - enclosed gas of the source, the measure of docs/benchmarks/cutmix.md.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench._common import add_overwrite_arg, machine_line, refuse_input_outputs, run_bench, write_report

log = logging.getLogger("bench.cutmix_rate")
SHIPPED = ("configs/tiny.yaml", "configs/demo.yaml", "configs/flare23.yaml")
FG_FRACTION = 1 / 3   # nnU-Net's default oversample_foreground_percent


def phantom_config(cfg, small: bool):
    """The config's phantoms (or the default ones for a folder-based config), fewer cases with ``small``."""
    from dataclasses import replace
    from flareseg.config import PhantomConfig
    ph = cfg.data.phantoms if cfg.data.source == "phantoms" else PhantomConfig()
    n = dict(labeled=8, tumor_only=2, unlabeled=4) if small else dict(labeled=12, tumor_only=3, unlabeled=6)
    return replace(ph, validation=0, **n)


def load_cases(ph: Path, spacing) -> list[dict]:
    """Every phantom at the coarse spacing: ``{id, image HU, label, type, spacing}``; unlabeled cases
    carry their hidden organ labels (tumor removed) as stand-in pseudo labels."""
    from flareseg.cto.pool import resample_crop
    from flareseg.io import read_array
    from flareseg.labels import ORGANS, TUMOR, label_type
    with open(ph / "manifest.csv") as f:
        types = {r["case_id"]: label_type(r["annotated"].split()) for r in csv.DictReader(f)}
    out = []
    for img_p in sorted((ph / "imagesTr").glob("*_0000.nii.gz")) + sorted((ph / "unlabeledTr").glob("*_0000.nii.gz")):
        cid = img_p.name[: -len("_0000.nii.gz")]
        img, geo = read_array(img_p)
        if cid in types:
            lab, t = read_array(ph / "labelsTr" / f"{cid}.nii.gz")[0], types[cid]
        else:
            lab, t = read_array(ph / "hidden_gt" / f"{cid}.nii.gz")[0], ORGANS
            lab = np.where(lab == TUMOR, 0, lab)
        out.append({"id": cid, "hu": img.astype(np.float32), "label": lab.astype(np.uint8), "type": t,
                    "spacing": geo.spacing_zyx})
        out[-1]["coarse"] = resample_crop(out[-1]["hu"], out[-1]["label"], geo.spacing_zyx, spacing, 1)
    return out


def ct_normalizer(cases: list[dict]):
    """nnU-Net's CT normalisation with the intensity properties of the labelled voxels (as its
    fingerprint computes them), and the lower clip."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization
    fg = np.concatenate([c["hu"][c["label"] > 0] for c in cases])
    props = {"mean": float(fg.mean()), "std": float(fg.std()), "percentile_00_5": float(np.percentile(fg, 0.5)),
             "percentile_99_5": float(np.percentile(fg, 99.5))}
    norm = CTNormalization(use_mask_for_norm=False, intensityproperties=props)
    return (lambda x: norm.run(np.asarray(x, dtype=np.float32).copy(), None)), props["percentile_00_5"]


def trainer_geometry(patch):
    """nnU-Net's rotation, dummy-2D flag, initial (pre-augmentation) patch and mirror axes for ``patch``."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    fake = SimpleNamespace(configuration_manager=SimpleNamespace(patch_size=list(patch)),
                           print_to_log_file=lambda *a, **k: None)
    return nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(fake)


def loader_crop(rng, img, lab, annotated, crop) -> tuple[np.ndarray, np.ndarray]:
    """One crop of ``crop`` voxels as nnU-Net's loader cuts it: centred on a voxel of an annotated
    class with probability ``FG_FRACTION``, else anywhere; outside the volume image 0 (``img`` in
    HU: normalise the crop, then zero the padding), label -1."""
    fg = np.argwhere(np.isin(lab, list(annotated))) if rng.random() < FG_FRACTION else np.zeros((0, 3))
    lo = []
    for ax, (n, c) in enumerate(zip(lab.shape, crop)):
        a, b = min(0, n - c), max(0, n - c)
        if len(fg):
            v = int(fg[rng.integers(len(fg))][ax])
            lo.append(int(np.clip(v - c // 2, a, b)))
        else:
            lo.append(int(rng.integers(a, b + 1)))
    out_i = np.zeros(crop, dtype=np.float32)
    out_l = np.full(crop, -1, dtype=np.int16)
    src = tuple(slice(max(0, s), min(n, s + c)) for s, n, c in zip(lo, lab.shape, crop))
    dst = tuple(slice(q.start - s, q.stop - s) for q, s in zip(src, lo))
    out_i[dst], out_l[dst] = img[src], lab[src]
    return out_i, out_l


def measure(config: str, scratch: Path, crops: int = 10, seed: int = 0, small: bool = False) -> dict:
    """Paste counts of ``config`` (module docstring) over ``crops`` crops of every eligible target."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from flareseg.anatomy import body_mask
    from flareseg.config import load_config, to_dict
    from flareseg.cto.cutmix import paste_boxes
    from flareseg.cto.pool import build_pool, load_pool
    from flareseg.data.phantoms import write_phantoms
    from flareseg.labels import FOREGROUND, TUMOR
    from flareseg.nnunet.plans import above_clip_floor
    from flareseg.nnunet.trainer import CutMixBeforeTransforms

    cfg = load_config(config)
    spacing, patch = tuple(cfg.coarse.spacing), tuple(cfg.coarse.patch_size)
    ph = scratch / "phantoms"
    write_phantoms(ph, phantom_config(cfg, small), progress=False)
    cases = load_cases(ph, spacing)
    norm, lower = ct_normalizer(cases)
    body_thr = above_clip_floor(norm, lower)
    src = ((c["id"], c["hu"], c["label"], c["spacing"]) for c in cases if TUMOR in c["type"])
    build_pool(src, scratch / "pool", cfg.cto, spacing, norm, patch_size=patch,
               abdomen_margin_mm=cfg.cto.abdomen_margin_mm, cleaning=cfg.cleaning, progress=False)
    pool = load_pool(scratch / "pool")
    rot, dummy2d, initial, mirror = trainer_geometry(patch)
    tf = nnUNetTrainer.get_training_transforms(patch, rot, None, mirror, dummy2d, foreground_labels=FOREGROUND)
    np.random.seed(seed)
    hook = CutMixBeforeTransforms(None, str(scratch / "pool"), spacing, to_dict(cfg.cutmix), body_thr,
                                  case_types={c["id"]: c["type"] for c in cases}, patch_size=patch)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    # the same objects kept in HU (margins depend on seed and case only): the air measure in HU
    src = ((c["id"], c["hu"], c["label"], c["spacing"]) for c in cases if TUMOR in c["type"])
    build_pool(src, scratch / "pool_hu", cfg.cto, spacing, lambda x: x, patch_size=patch,
               abdomen_margin_mm=cfg.cto.abdomen_margin_mm, cleaning=cfg.cleaning, progress=False)
    pool_hu = load_pool(scratch / "pool_hu")
    air = pasted = reached = trimmed = 0
    targets = [c for c in cases if TUMOR not in c["type"]]
    for c in targets:
        for _ in range(crops):
            hu, cl = loader_crop(rng, c["coarse"][0], c["coarse"][1], c["type"], [int(v) for v in initial])
            ci = np.where(cl >= 0, norm(hu), 0).astype(np.float32)
            hook.start_batch(c["type"])
            out = hook(torch.from_numpy(ci[None]), torch.from_numpy(cl[None]))
            body = body_mask(np.where(cl >= 0, hu, -np.inf), -500.0)
            trimmed += int(any(q.box is not None for q in hook.last_params.pastes))
            for q in hook.last_params.pastes:
                o_img, o_lab, o_air = q.piece(pool_hu[q.object_id])
                dst, sb = paste_boxes(q.centre, o_lab.shape, cl.shape)
                m = ~o_air[sb] & (cl[dst] >= 0)
                pasted += int(m.sum())
                air += int((m & (o_img[sb] < -500) & body[dst]).sum())
            final = tf(image=out["image"], segmentation=out["segmentation"])
            reached += int(hook.pasted[-1] and bool((final["segmentation"] == TUMOR).any()))
    n = hook.counts
    return {"config": config, "spacing": spacing, "patch": patch, "initial_patch": [int(v) for v in initial],
            "margins": load_pool(scratch / "pool").index["margin_ranges"], "objects": len(pool.ids),
            "targets": len(targets), "samples": len(targets) * crops, "eligible": n["eligible"],
            "pasted": n["pasted"], "reached_patch": reached, "trimmed": trimmed, "no_fit": n["no_fit"],
            "paste_rate": n["pasted"] / max(1, n["eligible"]), "air_fraction": air / max(1, pasted),
            "body_threshold": body_thr, "lower_clip_hu": lower}


def table(rows: list[dict]) -> str:
    head = ("| config | coarse spacing mm | patch (initial) | margins z / y / x (voxels) | pool objects | "
            "eligible | pasted | paste rate | context trimmed | tumor in final patch | no fit | air in pasted voxels |\n"
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        m = " / ".join(f"{a}-{b}" for a, b in r["margins"])
        lines.append(f"| {r['config']} | {list(r['spacing'])} | {list(r['patch'])} ({r['initial_patch']}) | {m} | "
                     f"{r['objects']} | {r['eligible']} | {r['pasted']} | {100 * r['paste_rate']:.1f} % | "
                     f"{r['trimmed']} | {r['reached_patch']} | {r['no_fit']} | {100 * r['air_fraction']:.2f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(SHIPPED))
    ap.add_argument("--crops", type=int, default=10, help="crops per eligible target case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_input_outputs({"--out": args.out}, args.configs, overwrite=args.overwrite)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.scratch or Path(tmp)
        for i, c in enumerate(args.configs):
            rows.append(measure(c, root / f"c{i}", args.crops, args.seed))
            print(table(rows[-1:]), flush=True)
    cmd = "python -m bench.cutmix_rate " + shlex.join(sys.argv[1:])
    text = (f"## CutMix paste rate per shipped config (issue 25)\n\nCommand: `{cmd}`  \nMachine: {machine_line()}\n\n"
            + table(rows) + "\n")
    write_report(text, args.out, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "cutmix_rate"))
