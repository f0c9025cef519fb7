"""Run ``FlareSegTrainer`` through nnU-Net's own training entry points (resumable)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from flareseg.config import TrainConfig, to_dict
from flareseg.io import read_json, write_json
from flareseg.nnunet.trainer import TRAIN_KEY

log = logging.getLogger(__name__)

TRAINER = "FlareSegTrainer"
PLANS = "nnUNetPlans"


def write_train_config(plans_file: Path, configuration: str, tc: TrainConfig,
                       extra: dict | None = None) -> None:
    """Store the training hyperparameters (+ ``extra`` entries such as CutMix) in the plans so the
    model folder carries them."""
    plans = read_json(plans_file)
    plans["configurations"][configuration][TRAIN_KEY] = to_dict(tc) | (extra or {})
    write_json(plans, plans_file)


def model_folder(results_dir: Path, dataset_name: str, configuration: str) -> Path:
    return Path(results_dir) / dataset_name / f"{TRAINER}__{PLANS}__{configuration}"


def train(dataset_name: str, configuration: str, tc: TrainConfig, preprocessed_dir: Path,
          results_dir: Path, extra: dict | None = None) -> dict:
    """Train (or resume) one configuration; returns checkpoint path, losses and pseudo-Dice."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    from flareseg.inference.predictor import resolve_device

    pre = Path(preprocessed_dir) / dataset_name
    write_train_config(pre / f"{PLANS}.json", configuration, tc, extra)
    os.environ["nnUNet_n_proc_DA"] = str(tc.num_workers)
    device = resolve_device(tc.device)
    if device.type == "cpu":
        os.environ["nnUNet_compile"] = "f"
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = model_folder(results_dir, dataset_name, configuration) / f"fold_{tc.fold}"
    resume = (out / "checkpoint_latest.pth").exists() or (out / "checkpoint_final.pth").exists()
    if (out / "checkpoint_final.pth").exists():
        log.info("%s: final checkpoint exists, nothing to train", out)
    else:
        trainer = get_trainer_from_args(dataset_name, configuration, tc.fold, TRAINER, PLANS,
                                        continue_training=resume, device=device)
        maybe_load_checkpoint(trainer, resume, False)
        trainer.run_training()
    return training_summary(out)


def recent_pseudo_dice(history: list, last: int = 10) -> list[float | None]:
    """Per class, the mean of its finite validation pseudo-Dice over the ``last`` epochs.

    Validation batches are label-type batches, so in one epoch most classes are unannotated (NaN);
    averaging the finite values of the last epochs gives every annotated class a number."""
    rows = np.asarray([r for r in history[-last:] if len(r)], dtype=np.float64)
    if rows.size == 0:
        return []
    out = []
    for col in rows.T:
        ok = col[np.isfinite(col)]
        out.append(round(float(ok.mean()), 4) if ok.size else None)
    return out


def training_summary(fold_dir: Path) -> dict:
    """Final losses and per-class validation pseudo-Dice (mean of the last 10 epochs) from the log."""
    import torch
    ck = Path(fold_dir) / "checkpoint_final.pth"
    state = torch.load(ck, map_location="cpu", weights_only=False)
    logs = state.get("logging", {})
    from flareseg.labels import CLASS_NAMES
    per_class = {CLASS_NAMES[i + 1]: d
                 for i, d in enumerate(recent_pseudo_dice(logs.get("dice_per_class_or_region", [])))}
    return {"checkpoint": str(ck), "epochs": int(state.get("current_epoch", 0)),
            "final_train_loss": _last(logs.get("train_losses")), "final_val_loss": _last(logs.get("val_losses")),
            "val_pseudo_dice": per_class, "trainer": state.get("trainer_name")}


def _last(v):
    return round(float(v[-1]), 4) if v else None
