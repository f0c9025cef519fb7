"""Context-aware CutMix benchmarks on a finished pipeline work dir (stages 1, 3 and 5 done).

    python -m bench.cutmix --work WORK [--scratch DIR] [--parts overhead dice]
                           [--blocks 8] [--batches 10] [--epochs E] [--iters I] [--out docs/benchmarks/cutmix.md]
    python -m bench.cutmix --parts air --phantoms PH [--config configs/demo.yaml] [--crops 20]

Inputs (read only, never modified): the stage-3 CTO pool ``WORK/stage-3-cto/pool``, stage-5's coarse
nnU-Net dataset ``WORK/stage-5-coarse/nnUNet_preprocessed/<Dataset>`` (plans, preprocessed
``coarse`` data, ``label_types.json``, split), its resolved config ``config.resolved.json``
(``train_coarse``, ``cutmix``, ``evaluation``) and the held-out validation set named by
``WORK/stage-1-fine/manifest.json`` (``validation_images`` / ``validation_labels``).  Everything
this script writes goes under ``--scratch``: a shadow preprocessed root (JSON files copied, data
folders symlinked) whose plans copy carries the training settings, and one results root per arm.

1. **overhead**: two ``FlareSegTrainer``s on the same plans, one with ``flareseg_train.cutmix`` (the
   stage-5 settings, pool above), one without; batches/s of each one's training data loader
   (label-type batches, nnU-Net's augmentation, ``nnUNet_n_proc_DA=0`` so loading runs in this
   process) timed in interleaved blocks (ABAB...) after a warm-up.  Reported: median s/batch,
   batches/s, ratio on/off (ratio of medians and median of paired block ratios), the fraction of
   batches that got a paste and the fraction of pasted batches / samples whose final (augmented)
   patch still holds tumor voxels.
2. **dice**: the coarse configuration trained twice at the same budget and seed (``train_coarse``
   of the resolved config; ``--epochs/--iters`` override), with and without CutMix, each into its
   own results root; each model predicts the validation images with ``FastPredictor`` (float32)
   and ``evaluate_folders`` scores them (organ mean DSC, tumor DSC / NSD).  An arm whose final
   checkpoint exists for this budget and seed is not retrained.

3. **air** (no work dir; ``--phantoms`` = a ``flareseg phantoms`` folder): where pasted boxes land.
   A CTO pool (``--config``'s ``cto`` settings, coarse spacing, images kept in HU) is built from
   the phantoms' tumor-annotated cases; every training phantom, resampled to the coarse spacing
   with its hidden full organ labels (tumor removed, type = all organs), gives ``--crops`` random
   crops of 1.25 x the coarse patch (inside the volume) as CutMix targets.  Each crop is pasted
   twice with the same seed: **before** = the placement before issue 16.3b (centre in the
   abdominal box, box clipped to the crop, the whole box pasted), **after** = today's (box inside
   the body, outer air of the object not pasted, source label types).  Reported: share of box
   voxels where the target is air (HU < -500: box sticking out of the body), share of pasted
   voxels that are air (HU < -500) where the target was soft tissue (body, HU >= -500), samples
   without a fitting location, samples whose label type narrowed.

Prints markdown tables; writes them (with command and machine) to ``--out`` only when given.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench._common import (add_overwrite_arg, machine_line, nnunet_process, refuse_input_outputs, run_bench,
                           write_report)
from bench.loss_ablation import predict_folder, seed_everything

log = logging.getLogger("bench.cutmix")
ARMS = ("cutmix", "no_cutmix")
CONFIGURATION = "coarse"


# ---------------------------------------------------------------------------------------- inputs
class WorkDir:
    """The finished pipeline run the benchmarks read (never written)."""

    def __init__(self, work: Path):
        from flareseg.io import read_json
        self.work = Path(work).resolve()
        s5 = self.work / "stage-5-coarse"
        if not (s5 / "config.resolved.json").exists():
            raise SystemExit(f"{s5}: no config.resolved.json (stage-5 not run in {self.work}?)")
        self.cfg = load_resolved(s5 / "config.resolved.json")
        pres = sorted(p for p in (s5 / "nnUNet_preprocessed").glob("Dataset*") if p.is_dir())
        if len(pres) != 1:
            raise SystemExit(f"{s5 / 'nnUNet_preprocessed'}: expected one coarse dataset, found {len(pres)}")
        self.pre_dataset = pres[0]
        self.dataset_name = pres[0].name
        s3 = self.work / "stage-3-cto" / "manifest.json"
        pool = read_json(s3)["result"]["pool_dir"] if s3.exists() else None
        self.pool = self.resolve(pool) if pool else self.work / "stage-3-cto" / "pool"
        if not (self.pool / "index.json").exists():
            raise SystemExit(f"{self.pool}: no CTO pool (index.json missing)")
        s1 = read_json(self.work / "stage-1-fine" / "manifest.json")["result"]
        if not s1.get("validation_images") or not s1.get("validation_labels"):
            raise SystemExit(f"{self.work}/stage-1-fine/manifest.json: no validation set")
        self.val_images, self.val_labels = self.resolve(s1["validation_images"]), self.resolve(s1["validation_labels"])

    def resolve(self, p: str) -> Path:
        """A path from a manifest: absolute, or relative to the folder the pipeline ran in (the
        work dir's parent when the work dir was given relatively) or to the current folder."""
        p = Path(p)
        if p.is_absolute():
            return p
        for base in (self.work.parent, Path.cwd()):
            if (base / p).exists():
                return (base / p).resolve()
        return (self.work.parent / p).resolve()

    def cutmix_extra(self) -> dict:
        """The ``flareseg_train`` extra stage-5 trains with."""
        from flareseg.config import to_dict
        return {"cutmix": {**to_dict(self.cfg.cutmix), "pool": str(self.pool)}}


def load_resolved(path: Path):
    """A stage's ``config.resolved.json`` as a :class:`flareseg.config.Config` (over the current
    defaults).  Re-emitted as YAML first: YAML 1.1 reads JSON's ``3e-05`` as a string, PyYAML's
    dump writes floats it reads back as floats; JSON's string keys of integer-keyed maps
    (``evaluation.nsd_tolerance_mm``) become integers again."""
    import json
    import tempfile
    import yaml
    from flareseg.config import load_config
    with tempfile.TemporaryDirectory() as tmp:
        y = Path(tmp) / "config.yaml"
        y.write_text(yaml.safe_dump(json.loads(Path(path).read_text(), object_hook=_int_keys)))
        return load_config(y)


def _int_keys(d: dict) -> dict:
    return {int(k) if k.isdigit() else k: v for k, v in d.items()}


def shadow_preprocessed(src: Path, root: Path) -> Path:
    """``root/<src.name>``: JSON files of the preprocessed dataset ``src`` copied (the plans copy is
    ours to write), data folders symlinked.  Returns the new dataset folder."""
    dst = root / src.name
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        q = dst / p.name
        if p.is_dir():
            if not q.exists():
                q.symlink_to(p.resolve(), target_is_directory=True)
        elif p.suffix == ".json":
            shutil.copyfile(p, q)
    return dst


def export_paths(scratch: Path, results: Path):
    from flareseg.nnunet.env import NNUNetPaths
    paths = NNUNetPaths(scratch / "nnUNet_raw", scratch / "nnUNet_preprocessed", results)
    paths.export()
    return paths


# -------------------------------------------------------------------------------------- overhead
def build_loader(wd: WorkDir, scratch: Path, arm: str, tc, device: torch.device):
    """Training data loader of a coarse ``FlareSegTrainer`` built from an in-memory plans copy
    (``flareseg_train`` = ``tc`` + the CutMix extra for arm ``cutmix``)."""
    from flareseg.config import to_dict
    from flareseg.io import read_json
    from flareseg.nnunet.trainer import TRAIN_KEY, FlareSegTrainer
    pre = scratch / "nnUNet_preprocessed" / wd.dataset_name
    plans = read_json(pre / "nnUNetPlans.json")
    plans["configurations"][CONFIGURATION][TRAIN_KEY] = \
        to_dict(tc) | (wd.cutmix_extra() if arm == "cutmix" else {})
    plans["continue_training"] = False   # as nnU-Net's get_trainer_from_args sets it
    export_paths(scratch, scratch / f"overhead_results_{arm}")   # trainer log files land here
    tr = FlareSegTrainer(plans, CONFIGURATION, tc.fold, read_json(pre / "dataset.json"), device)
    tr.initialize()
    gen_tr, _ = tr.get_dataloaders()
    return tr, gen_tr


def paste_stats(batch: dict) -> tuple[int, int, int]:
    """(samples pasted, pasted samples whose final patch holds tumor, eligible samples) of a batch."""
    from flareseg.labels import TUMOR
    pasted = batch.get("cutmix_pasted") or []
    if not any(pasted):
        return 0, 0, 0
    tgt = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
    with_tumor = sum(bool((tgt[i] == TUMOR).any()) for i, p in enumerate(pasted) if p)
    return sum(pasted), with_tumor, len(pasted)


def run_overhead(wd: WorkDir, scratch: Path, args) -> dict:
    from flareseg.labels import TUMOR
    tc = replace(wd.cfg.train_coarse, num_workers=0, device=args.device.type)
    nnunet_process(args.device.type, workers=0, threads=args.threads)
    loaders = {arm: build_loader(wd, scratch, arm, tc, args.device)[1] for arm in ARMS}
    for arm in ARMS:
        for _ in range(args.warmup):
            next(loaders[arm])
    times: dict[str, list[float]] = {a: [] for a in ARMS}
    blocks: dict[str, list[float]] = {a: [] for a in ARMS}
    st = {"batches": 0, "eligible": 0, "pasted_batches": 0, "pasted_batches_tumor": 0,
          "pasted_samples": 0, "pasted_samples_tumor": 0}
    for b in range(args.blocks):
        for arm in ARMS:   # same order every block: A B A B ...
            bt = []
            for _ in range(args.batches):
                t0 = time.perf_counter()
                batch = next(loaders[arm])
                bt.append(time.perf_counter() - t0)
                if arm == "cutmix":
                    n, n_tumor, _ = paste_stats(batch)
                    base = batch.get("label_type")
                    types = base if base and isinstance(base[0], (list, tuple)) else [base]
                    st["batches"] += 1
                    st["eligible"] += int(n > 0 or any(TUMOR not in tuple(t) for t in types))
                    st["pasted_batches"] += int(n > 0)
                    st["pasted_batches_tumor"] += int(n_tumor > 0)
                    st["pasted_samples"] += n
                    st["pasted_samples_tumor"] += n_tumor
            times[arm] += bt
            blocks[arm].append(statistics.median(bt))
        log.info("block %d/%d done", b + 1, args.blocks)
    med = {a: statistics.median(times[a]) for a in ARMS}
    paired = statistics.median(off / on for on, off in zip(blocks["cutmix"], blocks["no_cutmix"]))
    return {"median_s": med, "ratio_of_medians": med["no_cutmix"] / med["cutmix"], "paired_ratio": paired,
            "stats": st, "n": {a: len(times[a]) for a in ARMS}}


def overhead_table(r: dict, wd: WorkDir, args) -> str:
    c = wd.cfg
    st = r["stats"]
    frac = lambda a, b: f"{a}/{b} = {a / b:.2f}" if b else f"{a}/0"  # noqa: E731
    lines = [f"Coarse training data loader (`FlareSegTrainer`, label-type batches, nnU-Net augmentation, "
             f"`nnUNet_n_proc_DA=0`), patch {list(c.coarse.patch_size)}, batch {c.coarse.batch_size}, "
             f"torch threads {args.threads}; {args.blocks} interleaved blocks (ABAB) x {args.batches} batches "
             f"per arm after {args.warmup} warm-up batches; CutMix p={c.cutmix.probability}, "
             f"max_objects={c.cutmix.max_objects}, abdomen margin {c.cutmix.abdomen_margin_mm} mm.",
             "",
             "| loader | batches | median s/batch | batches/s |",
             "|---|---:|---:|---:|"]
    for a in ARMS:
        lines.append(f"| {a} | {r['n'][a]} | {r['median_s'][a]:.4f} | {1 / r['median_s'][a]:.2f} |")
    lines += ["",
              f"Ratio CutMix / no CutMix batches/s: {r['ratio_of_medians']:.3f} (ratio of medians), "
              f"{r['paired_ratio']:.3f} (median of paired block ratios).",
              "",
              "| CutMix loader batches | fraction |",
              "|---|---:|",
              f"| batch type lacks tumor (eligible) | {frac(st['eligible'], st['batches'])} |",
              f"| got a paste (of all batches) | {frac(st['pasted_batches'], st['batches'])} |",
              f"| pasted batches whose final patch holds tumor | {frac(st['pasted_batches_tumor'], st['pasted_batches'])} |",
              f"| pasted samples whose final patch holds tumor | {frac(st['pasted_samples_tumor'], st['pasted_samples'])} |"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ dice
def run_arm(arm: str, wd: WorkDir, scratch: Path, tc, args) -> dict:
    """Train (or reuse) one arm, predict the validation set, score it."""
    from flareseg.evaluation.evaluate import evaluate_folders
    from flareseg.nnunet.env import model_folder
    from flareseg.nnunet.training import train
    tag = f"{arm}_e{tc.epochs}x{tc.iterations_per_epoch}_s{tc.seed}"
    paths = export_paths(scratch, scratch / f"results_{tag}")
    seed_everything(tc.seed)
    mdir = model_folder(paths.results, wd.dataset_name, CONFIGURATION)
    reused = (mdir / f"fold_{tc.fold}" / "checkpoint_final.pth").exists()
    t0 = time.perf_counter()
    summary = train(wd.dataset_name, CONFIGURATION, tc, paths.preprocessed, paths.results,
                    extra=wd.cutmix_extra() if arm == "cutmix" else None)
    t_train = None if reused else time.perf_counter() - t0
    pred_dir = scratch / f"pred_{tag}"
    t0 = time.perf_counter()
    n = predict_folder(mdir, wd.val_images, pred_dir, args.device.type)
    t_pred = time.perf_counter() - t0
    res = evaluate_folders(pred_dir, wd.val_labels, wd.cfg.evaluation, out_dir=scratch / f"eval_{tag}")
    return {"arm": arm, "cases": n, "train_s": t_train, "predict_s": t_pred,
            "final_train_loss": summary["final_train_loss"], "organ_dsc": res.organ[0],
            "organ_nsd": res.organ[1], "tumor_dsc": res.tumor[0], "tumor_nsd": res.tumor[1]}


def run_dice(wd: WorkDir, scratch: Path, args) -> tuple[dict, list[dict]]:
    base = wd.cfg.train_coarse
    tc = replace(base, epochs=args.epochs or base.epochs,
                 iterations_per_epoch=args.iters or base.iterations_per_epoch,
                 seed=base.seed if args.seed is None else args.seed, device=args.device.type, fold=base.fold)
    tc = replace(tc, save_every=max(1, min(base.save_every, tc.epochs)))
    nnunet_process(args.device.type)
    rows = []
    for arm in ARMS:
        log.info("arm %s: training %d x %d iterations", arm, tc.epochs, tc.iterations_per_epoch)
        rows.append(run_arm(arm, wd, scratch, tc, args))
        log.info("arm %s: organ DSC %.3f, tumor DSC %.3f", arm, rows[-1]["organ_dsc"], rows[-1]["tumor_dsc"])
    return {"tc": tc}, rows


def dice_table(meta: dict, rows: list[dict], wd: WorkDir) -> str:
    tc = meta["tc"]
    lines = [f"Coarse configuration, {tc.epochs} epochs x {tc.iterations_per_epoch} iterations "
             f"({tc.val_iterations} validation iterations/epoch), seed {tc.seed}, loss {tc.loss}, "
             f"device {tc.device}; {rows[0]['cases']} held-out validation cases ({wd.val_images}).",
             "",
             "| arm | organ mean DSC | organ NSD | tumor DSC | tumor NSD | final train loss | train s | predict s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t_train = "reused" if r["train_s"] is None else f"{r['train_s']:.0f}"
        lines.append(f"| {r['arm']} | {r['organ_dsc']:.3f} | {r['organ_nsd']:.3f} | {r['tumor_dsc']:.3f} | "
                     f"{r['tumor_nsd']:.3f} | {r['final_train_loss']} | {t_train} | {r['predict_s']:.0f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- air
def run_air(args) -> dict:
    import csv
    import tempfile
    import numpy as np
    from flareseg.anatomy import body_mask
    from flareseg.config import load_config
    from flareseg.cto.cutmix import apply, object_infos, paste_boxes, sample_params
    from flareseg.cto.pool import build_pool, load_pool, resample_crop
    from flareseg.io import read_array
    from flareseg.labels import ORGANS, TUMOR, label_type

    cfg = load_config(args.config)
    spacing, patch = tuple(cfg.coarse.spacing), tuple(cfg.coarse.patch_size)
    ph = args.phantoms
    with open(ph / "manifest.csv") as f:
        types = {r["case_id"]: label_type(r["annotated"].split()) for r in csv.DictReader(f)}

    def case(cid):
        img, geo = read_array(ph / "imagesTr" / f"{cid}_0000.nii.gz")
        return img.astype(np.float32), geo.spacing_zyx

    with tempfile.TemporaryDirectory() as tmp:
        src = ((c, *_pair(case(c), read_array(ph / "labelsTr" / f"{c}.nii.gz")[0])) for c in sorted(types)
               if TUMOR in types[c])
        build_pool(src, Path(tmp) / "pool", cfg.cto, spacing, lambda x: x, patch_size=patch,
                   abdomen_margin_mm=cfg.cto.abdomen_margin_mm, progress=False)
        pool = load_pool(Path(tmp) / "pool")
        infos = object_infos(pool, types)
        crop = [int(round(p * 1.25)) for p in patch]
        rng_crop = np.random.default_rng(args.seed)
        st = {a: {"samples": 0, "pasted": 0, "box": 0, "box_air": 0, "pasted_vox": 0, "air_in_tissue": 0,
                  "no_fit": 0, "narrowed": 0} for a in ("before", "after")}
        for k, cid in enumerate(sorted(types)):
            img, sp = case(cid)
            full, _ = read_array(ph / "hidden_gt" / f"{cid}.nii.gz")
            full = np.where(full == TUMOR, 0, full)
            img, lab = resample_crop(img, full.astype(np.uint8), sp, spacing)
            for j in range(args.crops):
                lo = [int(rng_crop.integers(0, max(1, n - c) + 1)) for n, c in zip(lab.shape, crop)]
                box = tuple(slice(a, a + c) for a, c in zip(lo, crop))
                ti, tl = img[box], lab[box].astype(np.int16)
                body = body_mask(ti, -500.0)
                tissue = body & (ti >= -500)
                for arm in ("before", "after"):
                    rng = np.random.default_rng([args.seed, k, j])
                    if arm == "before":
                        p = sample_params(rng, tl, pool.ids, spacing, cfg.cutmix, image=ti)
                        oi, _ = apply(p, ti, tl, pool, keep_classes=ORGANS, keep_outer_air=True)
                    else:
                        p = sample_params(rng, tl, pool.ids, spacing, cfg.cutmix, image=ti, sample_type=ORGANS,
                                          objects=infos, body_threshold=-500.0)
                        oi, _ = apply(p, ti, tl, pool, air_threshold=-500.0)
                    s = st[arm]
                    s["samples"] += 1
                    s["pasted"] += int(p.applied)
                    s["no_fit"] += int(p.no_fit)
                    s["narrowed"] += int(p.applied and p.label_type is not None and p.label_type != (*ORGANS, TUMOR))
                    for q in p.pastes:
                        dst, _ = paste_boxes(q.centre, pool.shape(q.object_id), tl.shape)
                        changed = oi[dst] != ti[dst]
                        s["box"] += changed.size
                        s["box_air"] += int((ti[dst] < -500).sum())
                        s["pasted_vox"] += int(changed.sum())
                        s["air_in_tissue"] += int((changed & (oi[dst] < -500) & tissue[dst]).sum())
    return {"stats": st, "objects": len(pool.ids), "targets": len(types), "crop": crop, "spacing": spacing}


def _pair(img_sp, lab):
    return img_sp[0], lab, img_sp[1]


def air_table(r: dict, args) -> str:
    pct = lambda a, b: f"{100 * a / b:.2f} % ({a}/{b})" if b else "n/a"  # noqa: E731
    lines = [f"Phantoms `{args.phantoms}` ({r['targets']} training cases as targets, {args.crops} random crops of "
             f"{r['crop']} voxels each at the coarse spacing {list(r['spacing'])} mm; {r['objects']} pool objects "
             f"from the tumor-annotated cases, images in HU); CutMix settings of `{args.config}`, seed {args.seed}.",
             "",
             "| placement | samples pasted | no fitting location | type narrowed | box voxels on target air | "
             "pasted air on target soft tissue |",
             "|---|---:|---:|---:|---:|---:|"]
    for arm, s in r["stats"].items():
        lines.append(f"| {arm} | {s['pasted']}/{s['samples']} | {s['no_fit']} | {s['narrowed']} | "
                     f"{pct(s['box_air'], s['box'])} | {pct(s['air_in_tissue'], s['pasted_vox'])} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def machine() -> str:
    return machine_line("cuda" if torch.cuda.is_available() else "cpu (no GPU)").removeprefix("machine: ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="finished pipeline work dir (read only; "
                    "needed by overhead and dice)")
    ap.add_argument("--scratch", type=Path, default=None,
                    help="where models, predictions and the plans copy go (default <work>-cutmix-bench)")
    ap.add_argument("--parts", nargs="+", default=["overhead", "dice"], choices=("overhead", "dice", "air"))
    ap.add_argument("--phantoms", type=Path, default=None, help="air: a `flareseg phantoms` folder")
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="air: CTO/CutMix/coarse settings")
    ap.add_argument("--crops", type=int, default=20, help="air: random crops per target case")
    ap.add_argument("--blocks", type=int, default=8, help="overhead: interleaved blocks per arm")
    ap.add_argument("--batches", type=int, default=10, help="overhead: batches per block")
    ap.add_argument("--warmup", type=int, default=2, help="overhead: untimed batches per arm first")
    ap.add_argument("--threads", type=int, default=1, help="overhead: torch CPU threads")
    ap.add_argument("--epochs", type=int, default=None, help="dice: epochs (default train_coarse.epochs)")
    ap.add_argument("--iters", type=int, default=None,
                    help="dice: iterations per epoch (default train_coarse.iterations_per_epoch)")
    ap.add_argument("--seed", type=int, default=None, help="dice: training seed (default train_coarse.seed)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", type=Path, default=None, help="write the tables as markdown here "
                    "(e.g. docs/benchmarks/cutmix.md); without it nothing but scratch is written")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_input_outputs({"--out": args.out}, [args.config], folders=[args.work, args.phantoms], overwrite=args.overwrite)
    args.device = torch.device(args.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    nnunet_process(args.device.type)

    sections = []
    if "air" in args.parts:
        if args.phantoms is None:
            raise SystemExit("--parts air needs --phantoms")
        args.seed = 0 if args.seed is None else args.seed
        sections.append(("Where pasted boxes land (air)", air_table(run_air(args), args)))
    wd = None
    if {"overhead", "dice"} & set(args.parts):
        if args.work is None:
            raise SystemExit("--parts overhead/dice need --work")
        wd = WorkDir(args.work)
        scratch = (args.scratch or wd.work.parent / f"{wd.work.name}-cutmix-bench").resolve()
        if scratch == wd.work or wd.work in scratch.parents:
            raise SystemExit(f"--scratch {scratch} must lie outside the work dir {wd.work}")
        shadow_preprocessed(wd.pre_dataset, scratch / "nnUNet_preprocessed")
        seed_everything(0)

    if "overhead" in args.parts:
        r = run_overhead(wd, scratch, args)
        sections.append(("CutMix overhead per batch", overhead_table(r, wd, args)))
    if "dice" in args.parts:
        meta, rows = run_dice(wd, scratch, args)
        sections.append(("Tumor Dice with vs without CutMix (same budget and seed)", dice_table(meta, rows, wd)))

    cmd = "python -m bench.cutmix " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    body = "\n\n".join(f"## {t}\n\n{s}" for t, s in sections)
    print("\n" + body)
    if args.out is not None:
        where = "" if wd is None else f"Work dir: `{wd.work}` (dataset {wd.dataset_name}, CTO pool `{wd.pool}`).\n"
        text = (f"# Context-aware CutMix benchmarks\n\n{where}Machine: {machine()}.\n\nCommand (repository root):"
                f"\n\n```\n{cmd}\n```\n\n{body}\n")
        write_report(text, args.out, echo=False, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "cutmix"))
