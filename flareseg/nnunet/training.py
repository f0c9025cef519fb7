"""Run ``FlareSegTrainer`` through nnU-Net's own training entry points (resumable)."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from flareseg.config import TrainConfig, to_dict
from flareseg.io import read_json, remove_stale_temps, write_json
from flareseg.nnunet.checkpoint import FINAL, LATEST, PREVIOUS, CorruptCheckpoint, load_checkpoint, rng_path
from flareseg.nnunet.env import PLANS_NAME, TRAINER, model_folder, plans_file, preprocessed_dataset
from flareseg.nnunet.trainer import TRAIN_KEY

log = logging.getLogger(__name__)

def write_train_config(plans_file: Path, configuration: str, tc: TrainConfig,
                       extra: dict | None = None) -> None:
    """Store the training hyperparameters (+ ``extra`` entries such as CutMix) in the plans so the
    model folder carries them."""
    plans = read_json(plans_file)
    plans["configurations"][configuration][TRAIN_KEY] = to_dict(tc) | (extra or {})
    write_json(plans, plans_file)


#: TrainConfig keys that say how a training is launched, not what it trains (left out of step keys,
#: so a finished model is not retrained when only the number of processes changes)
LAUNCH_KEYS = ("gpus", "nodes", "rendezvous", "dist_timeout_min")


def train_key(tc: TrainConfig) -> dict:
    """The training settings that decide the model (the step key of a training step)."""
    return {k: v for k, v in to_dict(tc).items() if k not in LAUNCH_KEYS}


def backend_settings(device, compile_network: bool = True) -> dict:
    """The process-wide settings stock ``nnUNetv2_train`` (``run_training``) makes, which training
    through ``get_trainer_from_args`` bypasses: on CUDA ``cudnn.benchmark`` on and
    ``cudnn.deterministic`` off, and ``torch.compile`` (nnU-Net 2.8.1's default on CUDA,
    ``nnUNet_compile``) as ``compile_network`` says; never compiled on the CPU (stock refuses it
    there).  Returns what was set."""
    import torch
    cuda = torch.device(device).type == "cuda"
    os.environ["nnUNet_compile"] = "t" if cuda and compile_network else "f"
    out = {"nnUNet_compile": os.environ["nnUNet_compile"]}
    if cuda:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
        out.update(cudnn_benchmark=True, cudnn_deterministic=False)
    return out


def train(dataset_name: str, configuration: str, tc: TrainConfig, preprocessed_dir: Path,
          results_dir: Path, extra: dict | None = None, log_dir: Path | None = None) -> dict:
    """Train (or resume) one configuration; returns checkpoint path, losses and pseudo-Dice.

    Under torchrun (:mod:`flareseg.distributed` active) every rank calls this: rank 0 writes the
    plans entry and picks the resume point, all ranks train ``FlareSegTrainer`` under nnU-Net's DDP
    path (per-rank batch = batch / world), rank 0 alone writes checkpoints; each rank appends one
    line per epoch (weight digest, label types and cases per step) to ``log_dir/rank<R>.jsonl``."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from flareseg import distributed as dist
    from flareseg.devices import resolve_device

    plans = plans_file(preprocessed_dataset(preprocessed_dir, dataset_name))
    out = model_folder(results_dir, dataset_name, configuration) / f"fold_{tc.fold}"

    def prepare() -> tuple[Path | None, bool]:
        write_train_config(plans, configuration, tc, extra)
        start = resume_point(out)
        return start, (out / FINAL).exists()

    start, done = dist.on_main(prepare)
    os.environ["nnUNet_n_proc_DA"] = str(tc.num_workers)
    device = resolve_device(tc.device)
    if dist.active() and device.type == "cuda":
        device = torch.device("cuda", dist.env_world()[1])   # one device per rank: LOCAL_RANK
    log.info("training backend: %s", backend_settings(device, tc.compile))
    if device.type == "cpu":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist.active() else 1
        # the CPUs this process may run on (taskset/cgroup affinity), not all the machine's
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, usable // per_node))
    if done:
        log.info("%s: final checkpoint exists, nothing to train", out)
    else:
        trainer = get_trainer_from_args(dataset_name, configuration, tc.fold, TRAINER, PLANS_NAME,
                                        continue_training=start is not None, device=device)
        if dist.active() and log_dir is not None:
            trainer.rank_log = Path(log_dir) / f"rank{dist.rank()}.jsonl"
        if start is not None:
            trainer.load_checkpoint(str(start))
        with epoch_bar(trainer, f"train {configuration}", show=dist.is_main()) as bar:
            trainer.epoch_listener = bar
            trainer.run_training()
    return dist.on_main(lambda: training_summary(out))


@contextlib.contextmanager
def epoch_bar(trainer, desc: str, show: bool = True) -> Iterator[Callable[[dict], None]]:
    """A tqdm bar over the trainer's epochs (from the one it resumes at), its postfix the last
    epoch's train/val loss and mean pseudo-Dice; yields the trainer's ``epoch_listener``."""
    from tqdm import tqdm
    bar = tqdm(total=trainer.num_epochs, initial=trainer.current_epoch, desc=desc, unit="epoch",
               disable=not show, dynamic_ncols=True)

    def update(e: dict) -> None:
        bar.set_postfix_str(f"loss {e['train_loss']:.4f}, val {e['val_loss']:.4f}, "
                            f"pseudo-Dice {e['pseudo_dice']:.3f}", refresh=False)
        bar.update(e["epoch"] - bar.n)
        log.debug("epoch %d/%d: %s", e["epoch"], e["epochs"], e)

    try:
        yield update
    finally:
        bar.close()


def _probe(path: Path) -> tuple[dict | None, str | None]:
    """(contents, None) for a readable checkpoint file, (None, reason) for a damaged one; untrusted
    content still raises."""
    try:
        ck = load_checkpoint(path)
    except CorruptCheckpoint as e:
        return None, e.reason
    if not isinstance(ck, dict):
        return None, f"corrupt checkpoint (holds a {type(ck).__name__}, not a dict)"
    return ck, None


def resume_point(fold_dir: Path) -> Path | None:
    """Where training of ``fold_dir`` resumes: ``None`` for a fresh start or a finished one.

    A kill cannot truncate a checkpoint any more (atomic writes), but a damaged file (disk full,
    a copy cut short, an older flareseg) must not block the stage forever: each damaged file is
    renamed to ``<name>.damaged`` with one WARNING naming it and saying what happens instead.
    Preference: the latest checkpoint with its random state, the previous one with its random
    state (both continue exactly as an uninterrupted run would), either without it, else from
    scratch.  A damaged ``checkpoint_final.pth`` means the step runs again.  Temporary files of
    a killed write are removed.
    """
    fold_dir = Path(fold_dir)
    if not fold_dir.is_dir():
        return None
    remove_stale_temps(fold_dir)   # a killed checkpoint write's temp files (dead writers only)
    damaged: dict[Path, str] = {}
    final = fold_dir / FINAL
    if final.is_file():
        ck, why = _probe(final)
        if ck is not None:
            return None
        damaged[final] = why
    usable: list[tuple[Path, int, bool]] = []      # (checkpoint, epoch, random state usable)
    for p in (fold_dir / LATEST, fold_dir / PREVIOUS):
        if not p.is_file():
            continue
        ck, why = _probe(p)
        if ck is None:
            damaged[p] = why
            continue
        epoch = int(ck.get("current_epoch", 0))
        del ck
        exact = False
        if rng_path(p).is_file():
            st, why = _probe(rng_path(p))
            if st is None:
                damaged[rng_path(p)] = why
            else:
                exact = st.get("epoch", epoch) == epoch
        usable.append((p, epoch, exact))
    exact_pairs = [u for u in usable if u[2]]
    chosen = exact_pairs[0] if exact_pairs else (usable[0] if usable else None)
    if chosen is not None and chosen[0].name == PREVIOUS and fold_dir / LATEST not in damaged \
            and (fold_dir / LATEST).is_file():
        # a readable latest checkpoint whose random state is damaged: set the pair aside (resuming
        # from it would not continue as the uninterrupted run; the previous pair does)
        for p in (fold_dir / LATEST, rng_path(fold_dir / LATEST)):
            if p.is_file() and p not in damaged:
                damaged[p] = "not resumable exactly (its random state is damaged or of another epoch)"
    if chosen is None:
        action = "training this step again from scratch"
    elif chosen[2]:
        action = f"resuming from {chosen[0].name} (epoch {chosen[1]})"
    else:
        action = (f"resuming from {chosen[0].name} (epoch {chosen[1]}) without its random state "
                  "(not bit-identical to an uninterrupted run)")
    for p, why in damaged.items():
        aside = p.with_name(p.name + ".damaged")
        os.replace(p, aside)
        log.warning("%s: %s; moved to %s, %s", p, why, aside.name, action)
    return chosen[0] if chosen is not None else None


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
    ck = Path(fold_dir) / FINAL
    state = load_checkpoint(ck)
    logs = state.get("logging", {})
    from flareseg.labels import CLASS_NAMES
    per_class = {CLASS_NAMES[i + 1]: d
                 for i, d in enumerate(recent_pseudo_dice(logs.get("dice_per_class_or_region", [])))}
    return {"checkpoint": str(ck), "epochs": int(state.get("current_epoch", 0)),
            "final_train_loss": _last(logs.get("train_losses")), "final_val_loss": _last(logs.get("val_losses")),
            "val_pseudo_dice": per_class, "trainer": state.get("trainer_name")}


def _last(v):
    return round(float(v[-1]), 4) if v else None
