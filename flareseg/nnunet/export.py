"""Export a model folder that stock nnU-Net v2 loads as it is (no ``nnUNet_extTrainer``).

Our checkpoints name ``FlareSegTrainer``; stock ``nnUNetPredictor.initialize_from_trained_model_folder``
looks that name up among nnU-Net's own trainers (and ``nnUNet_extTrainer``'s) and fails without
the variable.  Inference needs only the network, which ``FlareSegTrainer`` builds from the plans
exactly as ``nnUNetTrainer`` does (:data:`flareseg.nnunet.model.PLAIN_ARCHITECTURE_TRAINERS`).  The
exported folder holds ``dataset.json``, ``plans.json`` (copied unchanged) and, per fold, each
checkpoint with only what stock's loader reads: ``network_weights``, ``trainer_name`` =
``nnUNetTrainer``, ``init_args`` (plans, configuration, fold, dataset_json, device),
``inference_allowed_mirroring_axes`` and ``current_epoch``; the optimizer and training logs are
dropped.  ``exported_from`` records the source folder and trainer.  The weights are checked to
load strictly into stock's network before anything is written.

The export is written into a temporary sibling folder renamed into place at the end, so a killed
export leaves no half-written model folder; an earlier export at the destination (it holds
:data:`MARKER`) is replaced, any other non-empty destination refused.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from flareseg.io import InputError, _umask, read_json, write_json

log = logging.getLogger(__name__)

STOCK_TRAINER = "nnUNetTrainer"
#: written into every exported folder: what it came from (and what marks it replaceable)
MARKER = "flareseg_export.json"
#: other files next to the plans that travel with the model (not read by stock nnU-Net)
EXTRA_FILES = ("label_types.json",)


def check_destination(model_dir: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Refuse (``InputError`` naming -o) a destination that is the model folder, inside it, a file,
    or a non-empty folder that is not an earlier export."""
    src, out = Path(model_dir).resolve(), Path(dest).resolve()
    if out == src:
        raise InputError(dest, "-o is the model folder -m: the export would overwrite the model")
    if src in out.parents:
        raise InputError(dest, f"-o is inside the model folder {model_dir}: the export would land "
                               "among the model's files (use a folder outside it)")
    if out.exists() and not out.is_dir():
        raise InputError(dest, "-o exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise InputError(dest, f"-o exists, is not empty and is not an earlier export (no {MARKER}); "
                               "use a new or empty folder")


def export_model(model_dir: str | os.PathLike, dest: str | os.PathLike,
                 folds: Sequence[int | str] | None = None, trust_model: bool = False) -> Path:
    """Write ``model_dir`` (folds ``folds``, default all) as a stock-loadable model folder ``dest``.

    Raises :class:`InputError` for a bad model folder, a damaged or untrusted checkpoint, or a bad
    destination, and :class:`flareseg.nnunet.model.ModelFolderError` when the checkpoints were
    made by a trainer that may build its own network (only plan-built networks are exported)."""
    from flareseg.nnunet.checkpoint import load_checkpoint, save_checkpoint
    from flareseg.nnunet.model import (CHECKPOINTS, PLAIN_ARCHITECTURE_TRAINERS, ModelFolderError,
                                       available_folds, build_network)
    from flareseg.nnunet.folder_check import check_model_folder

    src = check_model_folder(model_dir, folds)
    check_destination(src, dest)
    dest = Path(dest)
    plans, dataset_json = read_json(src / "plans.json"), read_json(src / "dataset.json")
    fold_names = [str(f) for f in folds] if folds is not None else available_folds(src)

    # load and check everything before writing anything
    exported: dict[Path, dict] = {}
    for f in fold_names:
        for name in CHECKPOINTS:
            path = src / f"fold_{f}" / name
            if not path.is_file():
                continue
            ck = load_checkpoint(path, trusted=trust_model)
            if not isinstance(ck, dict) or "network_weights" not in ck or "init_args" not in ck:
                raise InputError(path, "not an nnU-Net checkpoint (no network_weights/init_args)")
            trainer = ck.get("trainer_name", STOCK_TRAINER)
            if trainer not in PLAIN_ARCHITECTURE_TRAINERS:
                raise ModelFolderError(f"{path}: trained with {trainer}, which may build its own network; "
                                       f"only {', '.join(PLAIN_ARCHITECTURE_TRAINERS)} models are exported")
            configuration = ck["init_args"]["configuration"]
            net = build_network(plans, dataset_json, configuration, STOCK_TRAINER)
            try:
                net.load_state_dict(ck["network_weights"], strict=True)
            except RuntimeError as e:
                raise ModelFolderError(f"{path}: the weights do not fit stock {STOCK_TRAINER}'s network "
                                       f"from plans.json ({str(e).splitlines()[0]})") from None
            mirror = ck.get("inference_allowed_mirroring_axes")
            exported[Path(f"fold_{f}") / name] = {
                "network_weights": ck["network_weights"],
                "trainer_name": STOCK_TRAINER,
                "init_args": {"plans": plans, "configuration": configuration,
                              "fold": ck["init_args"].get("fold", f), "dataset_json": dataset_json,
                              "device": "cpu"},
                "inference_allowed_mirroring_axes": tuple(int(a) for a in mirror) if mirror is not None else None,
                "current_epoch": int(ck.get("current_epoch", 0)),
                "exported_from": {"model": str(src), "trainer_name": trainer},
            }
            del net
    trainers = sorted({e["exported_from"]["trainer_name"] for e in exported.values()})

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        write_json(plans, tmp / "plans.json")
        write_json(dataset_json, tmp / "dataset.json")
        for extra in EXTRA_FILES:
            if (src / extra).is_file():
                shutil.copyfile(src / extra, tmp / extra)
        for rel, ck in exported.items():
            (tmp / rel.parent).mkdir(exist_ok=True)
            save_checkpoint(ck, tmp / rel)
        write_json({"model": str(src), "trainer_name": trainers, "exported_trainer_name": STOCK_TRAINER,
                    "folds": fold_names, "checkpoints": sorted(str(r) for r in exported)}, tmp / MARKER)
        os.chmod(tmp, 0o777 & ~_umask())
        _replace_folder(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%s) to %s: %d checkpoint(s), trainer_name %s", src, ", ".join(trainers), dest,
             len(exported), STOCK_TRAINER)
    return dest


def _replace_folder(tmp: Path, dest: Path) -> None:
    """Put the finished folder ``tmp`` at ``dest`` (empty or an earlier export, moved aside first)."""
    old = None
    if dest.is_dir():
        if any(dest.iterdir()):
            old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
            os.replace(dest, old)
        else:
            dest.rmdir()
    os.replace(tmp, dest)
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
