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
    labels, stats = flareseg.predict(ct_image, model="models/coarse", statistics=True)  # in memory
    labels = flareseg.predict(array_zyx, model="models/coarse", spacing=(0.8, 0.8, 2.5))  # (x, y, z) mm
    flareseg.predict("inputs/", model="models/coarse", output="outputs/")          # {case: Path}
    result = flareseg.evaluate("outputs/", "labels/")                                # DSC/NSD
    flareseg.clean("labels/", "cleaned/", min_voxels=50)

torch and nnU-Net are imported on the first call, not at ``import flareseg``.  ``import flareseg``
sets ``OMP_WAIT_POLICY=PASSIVE`` when it is unset and torch is not imported yet, as the
``flareseg`` command does (see :mod:`flareseg`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from flareseg.errors import short_repr

if TYPE_CHECKING:
    import numpy as np
    import SimpleITK as sitk

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


def predict(input: PathLike | "sitk.Image" | "np.ndarray", model: PathLike, output: PathLike | None = None, *,
            config: PathLike | None = None, folds: Sequence[int | str] | None = None,
            save_probabilities: bool = False, statistics: bool = False, report: PathLike | None = None,
            preview: bool = False, per_class: bool = False, roi_subset: Sequence[str] | None = None,
            series: str | Sequence[str] | None = None, spacing: Sequence[float] | None = None,
            origin: Sequence[float] | None = None, direction: Sequence[float] | None = None,
            trust_model: bool = False, quiet: bool = True, overwrite: bool = False, **settings: Any):
    """Label maps of ``input`` with the model folder ``model``, as ``flareseg predict`` computes
    them (one batch runner, :mod:`flareseg.inference.batch`).

    ``input``: a CT file, a DICOM series folder or a folder of either (``series``: the
    SeriesInstanceUID, or several, picking one series of a DICOM folder holding several:
    ``--series``); or an in-memory CT: a ``SimpleITK.Image``, or a numpy array in **(Z, Y, X)**
    order (what ``SimpleITK.GetArrayFromImage`` gives) with ``spacing`` (mm) and optionally
    ``origin`` (mm) and ``direction`` (9 numbers, row-major 3x3, or a 3x3 nesting) in SimpleITK's
    **(x, y, z)** order (what ``image.GetSpacing()``, ``GetOrigin()``, ``GetDirection()`` return;
    default origin 0, identity direction).  An in-memory case is named ``image``.

    Settings: the defaults, then the model folder's stored settings (flareseg_inference.json),
    then the inference keys present in ``config``, then ``settings`` --
    :class:`flareseg.config.InferenceConfig` keys (``device``, ``skip_windows``,
    ``image_resampling``, ``tta``, ``step_size``, ...) -- as ``--config`` and the flags are.

    Without ``output`` nothing is written: one input gives its label map (a ``SimpleITK.Image`` on
    the input's grid: its geometry, or the numpy input's ``spacing``/``origin``/``direction``), a
    folder ``{case: image}``; with ``statistics=True`` the pair ``(labels, statistics)``, the
    statistics of one case (or ``{case: statistics}``) as statistics.json holds them
    (docs/statistics.md).  With ``output`` the files are those of ``flareseg predict -o output``
    (label maps, run report, optional .npz and statistics.json): one input gives the label map's
    path, a folder ``{case: path}``; when some cases fail the others are still written and
    :class:`CasesFailed` is raised at the end.  ``save_probabilities``, ``report``, ``preview``,
    ``per_class`` and ``roi_subset`` (the model's class names; implies ``per_class``; an unknown
    name raises :class:`flareseg.config.ConfigError` listing the valid ones) are
    ``--save-probabilities``, ``--report``, ``--preview``, ``--per-class`` and ``--roi-subset`` and
    need ``output``.  An existing file of an output's name that predict did not write raises
    :class:`flareseg.write_guard.UnsafeOutput` unless ``overwrite`` (``--overwrite``).

    Errors are flareseg's: :class:`flareseg.io.InputError` (an input or model folder that cannot
    be used, an input of another type), :class:`flareseg.config.ConfigError` (a setting or
    keyword, ``device="cuda"`` without CUDA), :class:`flareseg.write_guard.UnsafeOutput`.
    """
    _note_openmp()
    from flareseg.inference.batch import PredictJob, predict_in_memory, run_batch
    from flareseg.inference.predict_settings import resolve_settings

    images = _in_memory(input, spacing, origin, direction)
    if not isinstance(model, (str, os.PathLike)):
        from flareseg.io import InputError
        raise InputError(short_repr(model), "model: expected the path of a model folder")
    cfg, came_from = resolve_settings(model, _path_or_none(config, "config"), (),
                                      [("flareseg.predict keyword arguments", settings)])
    job = PredictJob(model=Path(model), cfg=cfg, input=None if images else Path(input), images=images,
                     output=_path_or_none(output, "output"),
                     folds=tuple(str(f) for f in folds) if folds is not None else None,
                     save_probabilities=save_probabilities, statistics=statistics,
                     report=_path_or_none(report, "report"), preview=preview, per_class=per_class,
                     roi_subset=tuple(roi_subset) if roi_subset else None, overwrite=overwrite,
                     trust_model=trust_model, quiet=quiet, config=config, inference_from=came_from,
                     series=_series(series))
    single = images is not None or Path(input).is_file() or _is_dicom(input)
    if output is None:
        needs = [k for k, v in (("save_probabilities", save_probabilities), ("report", report),
                                ("preview", preview), ("per_class", per_class), ("roi_subset", roi_subset)) if v]
        if needs:
            from flareseg.config import ConfigError
            raise ConfigError(f"flareseg.predict: {', '.join(needs)} need an output (output=FOLDER)")
        labels, stats = predict_in_memory(job)
        if single:
            labels, stats = next(iter(labels.values())), stats and next(iter(stats.values()))
        return (labels, stats) if statistics else labels

    _, rep = run_batch(job)
    written = {c["case"]: Path(c["output"]) for c in rep["cases"] if c["status"] == "ok"}
    failed = {c["case"]: c["error"] for c in rep["cases"] if c["status"] != "ok"}
    if failed:
        raise CasesFailed(failed, written)
    return next(iter(written.values())) if single else written


#: the name of an in-memory input's case (its label map's file name with an output folder)
IN_MEMORY_CASE = "image"


def _in_memory(input, spacing, origin, direction):
    """``((IN_MEMORY_CASE, image),)`` for an in-memory input (a ``SimpleITK.Image``, or a numpy
    array with its geometry), None for a path; flareseg errors for anything else."""
    from flareseg.config import ConfigError
    from flareseg.io import InputError
    given = [k for k, v in (("spacing", spacing), ("origin", origin), ("direction", direction)) if v is not None]
    if isinstance(input, (str, os.PathLike)) and not given:
        return None
    import numpy as np
    import SimpleITK as sitk
    if isinstance(input, sitk.Image) and not given:
        return ((IN_MEMORY_CASE, input),)
    if not isinstance(input, np.ndarray):
        if given:
            raise ConfigError(f"flareseg.predict: {', '.join(given)} go with a numpy array input "
                              f"(a path or a SimpleITK.Image carries its own geometry)")
        raise InputError(short_repr(input), f"input: expected a path, a SimpleITK.Image or a numpy array, "
                                            f"got {type(input).__name__}")
    return ((IN_MEMORY_CASE, image_from_array(input, spacing, origin, direction)),)


def image_from_array(arr, spacing: Sequence[float] | None, origin: Sequence[float] | None = None,
                     direction: Sequence[float] | Sequence[Sequence[float]] | None = None) -> "sitk.Image":
    """A ``SimpleITK.Image`` of the **(Z, Y, X)** array ``arr`` with ``spacing``, ``origin`` and
    ``direction`` in SimpleITK's **(x, y, z)** order (origin 0 and identity direction when None).
    :class:`InputError` for an array that is not a 3-D real-valued volume,
    :class:`flareseg.config.ConfigError` for a missing or malformed geometry."""
    import numpy as np
    import SimpleITK as sitk
    from flareseg.config import ConfigError
    from flareseg.io import InputError
    name = "<numpy array>"
    if arr.ndim != 3:
        raise InputError(name, f"expected a 3-D (Z, Y, X) array, got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise InputError(name, f"expected integer or floating-point voxels, got dtype {arr.dtype}")
    if spacing is None:
        raise ConfigError("flareseg.predict: spacing (x, y, z) in mm is needed with a numpy array input")

    def numbers(key: str, value, n: int, positive: bool = False) -> tuple[float, ...]:
        try:
            v = tuple(float(x) for x in np.asarray(value, dtype=float).ravel())
        except (TypeError, ValueError):
            v = ()
        if len(v) != n or not all(np.isfinite(v)) or (positive and min(v) <= 0):
            what = "positive " if positive else ""
            raise ConfigError(f"flareseg.predict: {key} needs {n} finite {what}numbers in (x, y, z) order, "
                              f"got {short_repr(value)}")
        return v

    sp = numbers("spacing", spacing, 3, positive=True)
    org = numbers("origin", origin, 3) if origin is not None else (0.0, 0.0, 0.0)
    dirs = numbers("direction", direction, 9) if direction is not None else (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    if abs(np.linalg.det(np.reshape(dirs, (3, 3)))) < 1e-6:
        raise ConfigError(f"flareseg.predict: direction is not a rotation (singular 3x3 matrix): {short_repr(direction)}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(sp)
    img.SetOrigin(org)
    img.SetDirection(dirs)
    return img


def _path_or_none(value, key: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        from flareseg.config import ConfigError
        raise ConfigError(f"flareseg.predict: {key} expects a path, got {type(value).__name__}")
    return Path(value)


def _series(series: str | Sequence[str] | None) -> tuple[str, ...]:
    """``series=`` as SeriesInstanceUIDs (a str or several); ConfigError for anything else."""
    if series is None:
        return ()
    uids = (series,) if isinstance(series, str) else tuple(series) if isinstance(series, (list, tuple)) else None
    if not uids or not all(isinstance(u, str) and u for u in uids):
        from flareseg.config import ConfigError
        raise ConfigError(f"flareseg.predict: series expects a SeriesInstanceUID or a list of them, "
                          f"got {short_repr(series)}")
    return uids


def _note_openmp() -> None:
    """Say once when OMP_WAIT_POLICY is unset at a prediction: torch was imported before flareseg
    (which sets it otherwise), so OpenMP threads spin while they wait -- several times slower when
    other processes share the cores."""
    global _NOTED
    if "OMP_WAIT_POLICY" not in os.environ and not _NOTED:
        _NOTED = True
        log.info("OMP_WAIT_POLICY is unset and torch was imported before flareseg: OpenMP threads spin while "
                 "they wait, several times slower when other processes share the cores; set "
                 "OMP_WAIT_POLICY=PASSIVE before importing torch (the flareseg command does)")


_NOTED = False


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
