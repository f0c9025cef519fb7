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

The inference settings travel with the model (:mod:`flareseg.inference.model_settings`,
``flareseg_inference.json``): the ones given (stage-6's resolved ``inference`` section, or
export-model's ``--config``/``--set`` over the source's), else the source folder's own, checked
before anything is written; a source without settings gives an export without them (predict then
uses the defaults).

Every file goes through :mod:`flareseg.write_guard`: written atomically and verified, recorded in
the destination's ledger.  The marker :data:`MARKER` is removed first and written last, so a
folder without it is an unfinished export; a failed export into a new folder leaves nothing.  An
earlier export at the destination is replaced file by file: only files an export wrote are
replaced or removed (never the folder wholesale: a model folder inside an earlier export stays);
any other non-empty destination is refused.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Sequence

from flareseg import write_guard
from flareseg.inference.model_settings import (SETTINGS_FILE, read_model_settings, settings_document,
                                               write_model_settings)
from flareseg.io import InputError, read_json, write_bytes, write_json
from flareseg.write_guard import LEDGER, WritePlan, check_plan, folder_files

log = logging.getLogger(__name__)

STOCK_TRAINER = "nnUNetTrainer"
#: written into every exported folder: what it came from (and what marks it replaceable)
MARKER = "flareseg_export.json"
#: other files next to the plans that travel with the model (not read by stock nnU-Net)
EXTRA_FILES = ("label_types.json",)


def export_plan(model_dir: str | os.PathLike, dest: str | os.PathLike, files: list[Path],
                overwrite: bool = False) -> WritePlan:
    """The :class:`flareseg.write_guard.WritePlan` of an export: ``files`` (relative to ``dest``)
    against every file of the model folder; ``dest`` may not be or lie inside the model folder and
    must be new, empty or an earlier export (a model folder inside an earlier export is fine: only
    the files export wrote there are replaced)."""
    src, out = Path(model_dir), Path(dest)
    reads = [*folder_files(src), *src.glob("fold_*/*")]
    return WritePlan("export-model", out, [out / f for f in files], reads=reads, input_folders=[src],
                     overwrite=overwrite, out_inside_input=False, input_inside_out=True,
                     input_names={src: "model folder"}, exclusive="export")


def check_destination(model_dir: str | os.PathLike, dest: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse (:class:`flareseg.write_guard.UnsafeOutput` naming -o) a destination that is the model
    folder, inside it, a file, or (unless ``overwrite``) a non-empty folder that is not an earlier
    export."""
    dest = Path(dest)
    if dest.is_dir():
        _adopt_earlier_export(dest)
    check_plan(export_plan(model_dir, dest, [], overwrite))


def _adopt_earlier_export(dest: Path) -> None:
    """Record as export's own what an export wrote before ledgers existed (its marker lists it)."""
    if (dest / LEDGER).exists() or not (dest / MARKER).is_file():
        return
    try:
        marker = read_json(dest / MARKER)
        checkpoints = [dest / c for c in marker.get("checkpoints", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return
    write_guard.adopt([dest / MARKER, dest / "plans.json", dest / "dataset.json", dest / SETTINGS_FILE,
                       *(dest / e for e in EXTRA_FILES), *checkpoints], "export-model")


def export_model(model_dir: str | os.PathLike, dest: str | os.PathLike,
                 folds: Sequence[int | str] | None = None, trust_model: bool = False,
                 overwrite: bool = False, inference: dict | None = None,
                 settings_source: str | None = None) -> Path:
    """Write ``model_dir`` (folds ``folds``, default all) as a stock-loadable model folder ``dest``,
    with the inference settings ``inference`` (InferenceConfig keys; ``settings_source`` says where
    they came from) or, when None, the ones ``model_dir`` carries.

    Raises :class:`InputError` for a bad model folder, a damaged or untrusted checkpoint, or a bad
    destination, and :class:`flareseg.nnunet.model.ModelFolderError` when the checkpoints were
    made by a trainer that may build its own network (only plan-built networks are exported), and
    :class:`flareseg.write_guard.UnsafeOutput` for a destination the write guard refuses
    (:func:`export_plan`), and :class:`flareseg.config.ConfigError` for bad settings (given, or a
    damaged settings file in ``model_dir``), before anything is loaded or written."""
    from flareseg.nnunet.checkpoint import load_checkpoint, save_checkpoint
    from flareseg.nnunet.model import (CHECKPOINTS, PLAIN_ARCHITECTURE_TRAINERS, ModelFolderError,
                                       available_folds, build_network)
    from flareseg.nnunet.folder_check import check_model_folder

    src = check_model_folder(model_dir, folds)
    check_destination(src, dest, overwrite)
    dest = Path(dest)
    if inference is None:
        inference, settings_source = read_model_settings(src) or None, f"export-model of {src}"
    if inference is not None:
        settings_source = settings_source or "export-model"
        settings_document(inference, settings_source)   # bad settings: refused before any work
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

    extras = [e for e in EXTRA_FILES if (src / e).is_file()]
    settings = [Path(SETTINGS_FILE)] if inference is not None else []
    files = [Path("plans.json"), Path("dataset.json"), *map(Path, extras), *settings, *exported, Path(MARKER)]
    check_plan(export_plan(src, dest, files, overwrite))   # again, now with every file it writes
    created = [d for d in (dest, *dest.parents) if not d.exists()]
    try:
        with write_guard.recording(dest, "export-model", overwrite):
            write_guard.compact(dest)
            write_guard.remove_owned(dest / MARKER, "export-model")   # incomplete until the marker is back
            write_json(plans, dest / "plans.json")
            write_json(dataset_json, dest / "dataset.json")
            for extra in extras:
                write_bytes((src / extra).read_bytes(), dest / extra)
            if inference is not None:
                write_model_settings(dest, inference, settings_source, "export-model", overwrite)
            for rel, ck in exported.items():
                (dest / rel.parent).mkdir(exist_ok=True)
                save_checkpoint(ck, dest / rel)
            _remove_earlier(dest, {dest / f for f in files})
            write_json({"model": str(src), "trainer_name": trainers, "exported_trainer_name": STOCK_TRAINER,
                        "folds": fold_names, "checkpoints": sorted(str(r) for r in exported),
                        "inference_settings": SETTINGS_FILE if inference is not None else None}, dest / MARKER)
    except BaseException:
        if created:   # a new destination holds only what this export wrote: leave nothing of it
            for f in files:   # (also files a full disk kept out of the ledger)
                with contextlib.suppress(OSError):
                    (dest / f).unlink()
            _remove_empty(dest, created)
        raise
    log.info("exported %s (%s) to %s: %d checkpoint(s), trainer_name %s", src, ", ".join(trainers), dest,
             len(exported), STOCK_TRAINER)
    return dest


def _remove_earlier(dest: Path, keep: set[Path]) -> None:
    """Remove what an earlier export wrote into ``dest`` that this one does not (a fold no longer
    exported); only files the ledger records as export's own and unchanged."""
    for rel in list(write_guard.ledger_entries(dest, "export-model")):
        p = dest / rel
        if p not in keep and write_guard.remove_owned(p, "export-model"):
            log.info("removed %s: written by an earlier export, not part of this one", p)
            if p.parent != dest:
                with contextlib.suppress(OSError):
                    p.parent.rmdir()   # a fold folder left empty


def _remove_empty(dest: Path, created: list[Path]) -> None:
    """Remove the fold folders and the folders this export created, when empty."""
    for d in sorted(dest.glob("fold_*"), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        (dest / LEDGER).unlink()
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()
