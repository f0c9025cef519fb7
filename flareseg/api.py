"""Python API: ``flareseg.predict``, ``flareseg.evaluate``, ``flareseg.clean`` and ``flareseg.statistics``, one call each.

Each call takes the command line's inputs, options and defaults (the settings are the config
keys: ``predict(..., device="cpu", skip_windows=False)`` is ``flareseg predict --device cpu
--no-skip``), runs the same checks before any work (an output that would overwrite an input is
refused; inputs are never written to) and raises instead of exiting: :class:`flareseg.io.InputError`
for a bad file or folder, :class:`flareseg.config.ConfigError` for a bad setting,
:class:`flareseg.write_guard.UnsafeOutput` for an output that is an input or would replace a file
the command did not write (``overwrite=True`` is ``--overwrite``).

    import flareseg
    labels = flareseg.predict("scan.nii.gz", model="models/coarse", device="cpu")   # SimpleITK image
    flareseg.predict("inputs/", model="models/coarse", output="outputs/")          # {case: Path}
    result = flareseg.evaluate("outputs/", "labels/")                                # DSC/NSD
    flareseg.clean("labels/", "cleaned/", min_voxels=50)

torch and nnU-Net are imported on the first call, not at ``import flareseg``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


class CasesFailed(RuntimeError):
    """Some cases of a batch failed (each one logged and in the run report); the others were
    written.  ``failed`` maps case -> reason, ``written`` case -> output path."""

    def __init__(self, failed: dict[str, str], written: dict[str, Path]):
        self.failed, self.written = failed, written
        first = next(iter(failed.items()))
        super().__init__(f"{len(failed)} of {len(failed) + len(written)} cases failed "
                         f"(first: {first[0]}: {first[1]})")


def _settings(section: str, config: PathLike | None, settings: dict[str, Any]):
    """``config``'s ``section`` (the defaults without a file) with ``settings`` (its own key names)
    applied and checked like a config file."""
    from flareseg.config import config_from_dict, load_config, to_dict
    cfg = load_config(config) if config is not None else None
    if not settings:
        return getattr(cfg, section) if cfg is not None else getattr(config_from_dict({}), section)
    base = to_dict(cfg) if cfg is not None else {}
    base[section] = {**base.get(section, {}), **settings}
    return getattr(config_from_dict(base, f"flareseg.{section} keyword arguments"), section)


def predict(input: PathLike, model: PathLike, output: PathLike | None = None, *,
            config: PathLike | None = None, folds: Sequence[int | str] | None = None,
            save_probabilities: bool = False, statistics: bool = False, report: PathLike | None = None,
            preview: bool = False, per_class: bool = False, roi_subset: Sequence[str] | None = None,
            trust_model: bool = False, quiet: bool = True, overwrite: bool = False, **settings: Any):
    """Label maps of ``input`` (a CT file, a DICOM series folder, or a folder of either) with the
    model folder ``model``, as ``flareseg predict`` computes them.

    ``settings`` are :class:`flareseg.config.InferenceConfig` keys (``device``, ``skip_windows``,
    ``image_resampling``, ``tta``, ``step_size``, ...) applied over ``config``'s inference section
    (the defaults without one), exactly as ``--config``/``--set``/the flags are.

    Without ``output`` nothing is written: one input gives its label map (a SimpleITK image on
    the input's grid), a folder ``{case: image}``.  With ``output`` the files are those of
    ``flareseg predict -o output`` (label maps, run report, optional .npz and statistics.json):
    one input gives the label map's path, a folder ``{case: path}``; when some cases fail the
    others are still written and :class:`CasesFailed` is raised at the end.  ``preview``,
    ``per_class`` and ``roi_subset`` (the model's class names; implies ``per_class``; an unknown name raises
    :class:`flareseg.config.ConfigError` listing the valid ones) are ``--preview``,
    ``--per-class`` and ``--roi-subset`` and need ``output``.  An existing file of an output's name
    that predict did not write raises :class:`flareseg.write_guard.UnsafeOutput` unless
    ``overwrite`` (``--overwrite``).
    """
    from flareseg.config import inference_config
    from flareseg.inference.commands import check_predict, collect_inputs, make_output_folder, predict_cases
    from flareseg.nnunet.folder_check import check_model_folder

    cfg = inference_config(_settings("inference", config, {}), "flareseg.predict keyword arguments",
                           **settings)
    single = Path(input).is_file() or _is_dicom(input)
    if output is None:
        if save_probabilities or statistics or report is not None or preview or per_class or roi_subset:
            raise ValueError("save_probabilities, statistics, report, preview, per_class and roi_subset "
                             "need an output folder")
        cases = collect_inputs(Path(input))
        check_model_folder(model, folds)
    else:
        cases, plan = check_predict(input, output, model, folds, save_probabilities, statistics, report,
                                    preview, per_class, roi_subset, overwrite=overwrite)

    from flareseg.inference.predictor import FastPredictor
    if cfg.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            from flareseg.config import ConfigError
            raise ConfigError("inference.device: 'cuda' but no CUDA device is available (use 'cpu' or 'auto')")
    if output is None:
        predictor = FastPredictor(model, cfg, folds=folds, trust_model=trust_model)
        images = {case: predictor.predict(path) for case, path in cases}
        return next(iter(images.values())) if single else images

    created = make_output_folder(plan)
    t0 = time.perf_counter()
    try:
        predictor = FastPredictor(model, cfg, folds=folds, trust_model=trust_model)
    except BaseException:
        from flareseg.inference.commands import remove_created
        remove_created(created)
        raise
    rep = predict_cases(predictor, cases, plan, save_probabilities=save_probabilities, statistics=statistics,
                        quiet=quiet, config=config, load_seconds=time.perf_counter() - t0, overwrite=overwrite)
    written = {c["case"]: Path(c["output"]) for c in rep["cases"] if c["status"] == "ok"}
    failed = {c["case"]: c["error"] for c in rep["cases"] if c["status"] != "ok"}
    if failed:
        raise CasesFailed(failed, written)
    return next(iter(written.values())) if single else written


def _is_dicom(path: PathLike) -> bool:
    from flareseg.io import is_dicom_dir
    return Path(path).is_dir() and is_dicom_dir(path)


def evaluate(pred: PathLike, gt: PathLike, out: PathLike | None = None, *, config: PathLike | None = None,
             classes: Sequence[int] | None = None, rules: str | None = None, missing_as_zero: bool = False,
             overwrite: bool = False, **settings: Any):
    """FLARE23 DSC/NSD of the label maps ``pred`` (a folder or one file) against ``gt``, as
    ``flareseg evaluate`` scores them; ``settings`` are :class:`flareseg.config.EvaluationConfig`
    keys (``nsd_min_dsc``, ``rules``, ...).  With ``out`` the reports (per_case.csv, summary.json,
    summary.txt) are written there.  Returns the :class:`EvaluationResult` (``.ok`` is False when a
    prediction was missing or unreadable; those cases are in its errors)."""
    import argparse

    from flareseg.evaluation.commands import check_evaluate_args
    from flareseg.evaluation.evaluate import evaluate_folders
    from flareseg.labels import FOREGROUND

    if rules is not None:
        settings = {**settings, "rules": rules}
    cfg = _settings("evaluation", config, settings)
    args = argparse.Namespace(pred=Path(pred), gt=Path(gt), out=Path(out) if out is not None else None,
                              classes=list(classes) if classes is not None else list(FOREGROUND),
                              overwrite=overwrite)
    check_evaluate_args(args)
    return evaluate_folders(args.pred, args.gt, cfg, args.out, classes=args.classes,
                            missing_as_zero=missing_as_zero, overwrite=overwrite)


def clean(labels: PathLike, out: PathLike, *, images: PathLike | None = None, config: PathLike | None = None,
          force: bool = False, overwrite: bool = False, **settings: Any):
    """Clean the label maps of the folder ``labels`` into ``out`` as ``flareseg clean`` does
    (``out/labels/`` and the reports); ``settings`` are :class:`flareseg.config.CleaningConfig` keys
    (``min_voxels``, ``max_organ_distance_mm``, ...).  Returns the :class:`CleaningReport` (its
    ``errors`` hold the cases that failed; the others were cleaned)."""
    import argparse

    from flareseg.cleaning.commands import check_paths
    from flareseg.cleaning.folder import clean_folder
    from flareseg.io import remove_stale_temps

    cfg = _settings("cleaning", config, settings)
    check_paths(argparse.Namespace(labels=labels, out=out, images=images, overwrite=overwrite))
    if Path(out).is_dir():   # what a killed earlier run left half-written
        remove_stale_temps(out, recursive=True)
    return clean_folder(labels, out, cfg, images, force=force, overwrite=overwrite)


def statistics(image, seg, spacing_zyx: Sequence[float] | None = None) -> dict:
    """Volumes (mL) and HU statistics per class and per tumor component of the segmentation
    ``seg`` of the CT ``image``, in memory (``flareseg statistics -i CT -s SEG`` without ``-o``).

    Each may be a path, a ``SimpleITK.Image`` or a ``(Z, Y, X)`` numpy array (give
    ``spacing_zyx`` in mm when neither carries a geometry).  Schema: docs/statistics.md."""
    from flareseg.inference.statistics import segmentation_statistics
    return segmentation_statistics(image, seg, spacing_zyx)
