"""Partial-label loss ablation on phantoms with hidden full ground truth: merge-max vs released vs
marginal vs naive at the same training budget.

    python -m bench.loss_ablation [--work /tmp/flareseg-bench-trainer] [--config configs/demo.yaml]
                                  [--epochs 8] [--iters 20] [--variants merge_max released marginal naive]

Prepares stage-1's data part once (phantoms -> nnU-Net dataset -> fine plans + preprocessing; an
existing stage-1 work folder is reused).  Then, per loss variant, trains the fine configuration with
``FlareSegTrainer`` into a results root of its own (shared preprocessed data, same epochs x
iterations and ``--seed``, which is the trainer's seed: every variant starts from the same weights
and sees the same batch sequence, another ``--seed`` changes weights, batches, augmentation and
CutMix draws), predicts the held-out validation phantoms (``imagesVal``, full labels in ``labelsVal``)
with ``FastPredictor`` and scores them with ``evaluate_folders``.  A variant whose final checkpoint
exists for this budget and seed is not retrained (predicted and scored again).  A reference row
trains stock ``nnUNetTrainer`` the same way (random batches, unannotated classes = background).

Prints organ mean DSC, tumor DSC and a few large organs per variant; writes
``<out>/summary.json``, predictions (``pred_<variant>_e<E>x<I>_s<seed>/``) and evaluation reports
(``eval_<...>/``).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench._common import add_overwrite_arg, nnunet_process, run_bench, write_json_report
from bench.phantom_setup import add_data_args, prepare, refuse_data_outputs, stage_dir

VARIANTS = ("merge_max", "released", "marginal", "naive")
STOCK = "stock_nnUNetTrainer"
SHOWN = {1: "liver", 2: "kidney R", 3: "spleen", 4: "pancreas", 13: "kidney L"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def predict_folder(model_dir: Path, images: Path, out: Path, device: str) -> int:
    """Predict every ``<case>_0000.nii.gz`` of ``images`` into ``out/<case>.nii.gz``."""
    from flareseg.inference.predictor import FastPredictor
    from flareseg.io import write_image
    pred = FastPredictor(model_dir, device=device, dtype="float32")
    files = sorted(images.glob("*_0000.nii.gz"))
    for f in files:
        write_image(pred.run(f).labels, out / f.name.replace("_0000.nii.gz", ".nii.gz"))
    return len(files)


def train_stock(dataset: str, args, results: Path) -> tuple[Path, float | None]:
    """Reference: stock ``nnUNetTrainer`` (random batches, plain Dice+CE on the partial labels as
    given, i.e. unannotated = background) at the same budget, threads and seed."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from flareseg.nnunet.checkpoint import load_checkpoint
    mdir = results / dataset / "nnUNetTrainer__nnUNetPlans__fine"
    if not (mdir / "fold_0" / "checkpoint_final.pth").exists():
        nnunet_process(args.device, workers=args.workers, threads=max(1, os.cpu_count() or 1))  # as train() does
        tr = get_trainer_from_args(dataset, "fine", 0, "nnUNetTrainer", "nnUNetPlans",
                                   device=torch.device(args.device))
        tr.num_epochs, tr.num_iterations_per_epoch = args.epochs, args.iters
        tr.num_val_iterations_per_epoch = args.val_iters
        tr.run_training()
    state = load_checkpoint(mdir / "fold_0" / "checkpoint_final.pth")
    losses = state.get("logging", {}).get("train_losses") or [None]
    return mdir, (None if losses[-1] is None else round(float(losses[-1]), 4))


def variant_config(base, variant: str, args):
    """The ``TrainConfig`` of one loss variant: ``base`` at the benchmark's budget, ``--seed``
    (the trainer seeds weights, batch order, augmentation and CutMix from it), data loading in
    ``--workers`` processes."""
    return replace(base, epochs=args.epochs, iterations_per_epoch=args.iters, val_iterations=args.val_iters,
                   loss=variant, num_workers=args.workers, device=args.device, save_every=args.epochs,
                   fold=0, seed=args.seed)


def run_variant(variant: str, data, args, out: Path) -> dict:
    from flareseg.evaluation.evaluate import evaluate_folders
    from flareseg.nnunet.env import NNUNetPaths
    from flareseg.nnunet.env import model_folder
    from flareseg.nnunet.training import train

    tag = f"{variant}_e{args.epochs}x{args.iters}_s{args.seed}"
    paths = NNUNetPaths(data.paths.raw, data.paths.preprocessed, out / f"results_{tag}")
    paths.export()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    if variant == STOCK:
        mdir, final_loss = train_stock(data.dataset_name, args, paths.results)
    else:
        tc = variant_config(data.cfg.train_fine, variant, args)
        final_loss = train(data.dataset_name, "fine", tc, paths.preprocessed, paths.results)["final_train_loss"]
        mdir = model_folder(paths.results, data.dataset_name, "fine")
    t_train = time.perf_counter() - t0
    pred_dir = out / f"pred_{tag}"
    t0 = time.perf_counter()
    n = predict_folder(mdir, data.validation_images, pred_dir, args.device)
    t_pred = time.perf_counter() - t0
    res = evaluate_folders(pred_dir, data.validation_labels, out_dir=out / f"eval_{tag}")
    pc = res.per_class()
    return {"variant": variant, "model_dir": str(mdir), "train_seconds": round(t_train, 1),
            "predict_seconds": round(t_pred, 1), "cases": n, "final_train_loss": final_loss,
            "organ_dsc": res.organ[0], "tumor_dsc": res.tumor[0], "organ_nsd": res.organ[1],
            "tumor_nsd": res.tumor[1], "per_class_dsc": {str(c): v[0] for c, v in pc.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(ap)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default <work>/loss_ablation)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--no-stock", action="store_true",
                    help="skip the reference row: stock nnUNetTrainer on the partial labels as given")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20, help="training iterations per epoch")
    ap.add_argument("--val-iters", type=int, default=2, help="validation iterations per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="nnUNet_n_proc_DA")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    out = (args.out or stage_dir(args.work).parent / "loss_ablation").resolve()
    refuse_data_outputs({"--out": out / "summary.json"}, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    nnunet_process(args.device)

    data = prepare(args.work, args.config, args.overrides, configurations=("fine",))
    rows = []
    for v in list(args.variants) + ([] if args.no_stock else [STOCK]):
        logging.info("variant %s: training %d x %d iterations", v, args.epochs, args.iters)
        rows.append(run_variant(v, data, args, out))
        logging.info("variant %s: organ DSC %.3f, tumor DSC %.3f", v, rows[-1]["organ_dsc"], rows[-1]["tumor_dsc"])
    write_json_report({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, out / "summary.json",
                      args.overwrite)

    print(f"\nfine configuration, {args.epochs} epochs x {args.iters} iterations, seed {args.seed}, "
          f"device {args.device}; {rows[0]['cases']} held-out validation phantoms with full labels")
    print("| loss | organ mean DSC | tumor DSC | " + " | ".join(SHOWN.values()) + " | final train loss | train s |")
    print("|---|---:|---:|" + "---:|" * len(SHOWN) + "---:|---:|")
    for r in rows:
        pcs = " | ".join(f"{r['per_class_dsc'][str(c)]:.3f}" for c in SHOWN)
        print(f"| {r['variant']} | {r['organ_dsc']:.3f} | {r['tumor_dsc']:.3f} | {pcs} | {r['final_train_loss']} | {r['train_seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "loss_ablation"))
