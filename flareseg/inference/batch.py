"""One predict batch, what `flareseg predict` and :func:`flareseg.predict` both run: every check
before any work (inputs, outputs, model folder, device), the output folder, the predictor (the
folders created are removed again when it cannot load), the cases (one failing case is reported,
the others still run) and the run report; or, without an output, the label maps and statistics
in memory (:func:`predict_in_memory`).  The callers differ only in how they report: the command
line logs one line and exits 2, the API raises."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from flareseg.config import ConfigError, InferenceConfig, to_dict
from flareseg.io import InputError, read_json, write_image, write_json
from flareseg.inference.output_plan import (OutputPlan, check_predict, collect_inputs, make_output_folder,
                                            remove_created)
from flareseg import write_guard

log = logging.getLogger(__name__)

#: a case: (name, a path (file or DICOM series folder) or an in-memory SimpleITK image)
Cases = Sequence[tuple[str, "Path | sitk.Image"]]

#: the one refusal of a CUDA device that is not there (command line, API and report alike)
NO_CUDA = "--device cuda (inference.device): no CUDA device is available (use --device cpu or auto)"


@dataclass(frozen=True)
class PredictJob:
    """One predict run: the command line's arguments, the API's keywords.

    ``input`` is a path (a CT file, a DICOM series folder or a folder of either); ``images``
    in-memory cases (name, ``SimpleITK.Image``) instead.  ``output`` None: nothing is written
    (:func:`predict_in_memory`).  ``config`` is only named in the report (``cfg`` is resolved);
    ``inference_from``: key -> where it was set (:mod:`flareseg.inference.predict_settings`);
    ``series``: SeriesInstanceUIDs picking one series of a DICOM folder holding several."""

    model: Path
    cfg: InferenceConfig
    input: Path | None = None
    images: tuple[tuple[str, sitk.Image], ...] | None = None
    output: Path | None = None
    folds: tuple[str, ...] | None = None
    save_probabilities: bool = False
    statistics: bool = False
    report: Path | None = None
    preview: bool = False
    per_class: bool = False
    roi_subset: tuple[str, ...] | None = None
    overwrite: bool = False
    trust_model: bool = False
    quiet: bool = True
    config: Path | None = None
    inference_from: dict[str, str] = field(default_factory=dict)
    series: tuple[str, ...] = ()
    output_format: str = "nifti"   # dicom-seg: also a DICOM SEG per DICOM series case

    @property
    def series_pick(self) -> tuple[str, ...] | None:
        """What the predictor's ``series=`` gets (None: the ``--series`` of the command, if any)."""
        return self.series or None


def check_device(cfg: InferenceConfig):
    """The torch device ``cfg`` runs on; :class:`ConfigError` when it cannot run here (CUDA asked
    for but missing, a runtime that cannot run on the device): the one check, before any work."""
    import torch
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(NO_CUDA)
    from flareseg.inference.runtimes import resolve_runtime
    run_on, problem = resolve_runtime(cfg.runtime, cfg.device)
    if problem:
        raise ConfigError(problem)
    return run_on


def open_predictor(job: PredictJob, created: Sequence[Path] = ()):
    """The job's :class:`FastPredictor`; when it cannot load, the (empty) folders ``created`` are
    removed again (by rank 0, after every rank failed, under torchrun) and the error raised."""
    from flareseg import distributed as dist
    from flareseg.inference.predictor import FastPredictor
    from flareseg.nnunet.model import ModelFolderError
    try:
        return FastPredictor(job.model, job.cfg, folds=job.folds, trust_model=job.trust_model)
    except BaseException as e:
        if isinstance(e, (InputError, ModelFolderError)):   # every rank fails alike: no rank waits
            dist.barrier()
        if dist.is_main():
            remove_created(created)   # leave no empty output folders behind
        raise


def run_batch(job: PredictJob, *, own_process: bool = False,
              command_age: float | None = None) -> tuple[OutputPlan, dict]:
    """Predict ``job`` into its output; returns what was planned and the run report (also written;
    its ``cases`` say which failed).  Raises before any work: :class:`InputError` (bad input or model folder, an
    output folder that cannot be created or written), :class:`flareseg.write_guard.UnsafeOutput`,
    :class:`ConfigError` (a class name, a device that is not there), and what the model load raises.
    ``own_process`` (the command line): the process is this run's, so freed memory is kept for
    the next window on a CPU, a torchrun launch shares the cases between its ranks, and the report
    splits the cold run from ``command_age`` (the process age when the command started)."""
    from flareseg import distributed as dist
    from flareseg.inference.cold_start import process_age_seconds
    cases, plan = check_predict(job.input, job.output, job.model, job.folds, job.save_probabilities,
                                job.statistics, job.report, job.preview, job.per_class, job.roi_subset,
                                overwrite=job.overwrite, cases=job.images,
                                dicom_seg=job.output_format == "dicom-seg")
    run_on = check_device(job.cfg)
    kept = None
    if own_process and run_on.type == "cpu":   # windows reuse freed memory instead of page-faulting
        from flareseg.inference.cpu_memory import keep_freed_memory
        kept = keep_freed_memory()
    if own_process and dist.launched():   # torchrun: one device per rank, each rank its hash shard of the cases
        dist.init_from_env(job.cfg.device)
    try:
        created = dist.on_main(lambda: make_output_folder(plan))   # to undo on refusal
    except OSError as e:
        raise InputError(plan.folder, f"cannot create or write into the output folder ({e.strerror or e})") from None
    age_at_load = process_age_seconds()
    t0 = time.perf_counter()
    predictor = open_predictor(job, created)
    report = predict_cases(predictor, cases, plan, job, load_seconds=time.perf_counter() - t0,
                           shared=own_process, keep_freed_memory=kept,
                           ages=(command_age, age_at_load) if own_process else None)
    if own_process:
        dist.shutdown()
    return plan, report


def predict_in_memory(job: PredictJob) -> tuple[dict[str, sitk.Image], dict[str, dict] | None]:
    """The label maps of ``job``'s cases (case -> SimpleITK image on the input's grid) and, with
    ``job.statistics``, their statistics (case -> the entry statistics.json would hold; None
    without); nothing is written.  The first failing case raises."""
    from flareseg.nnunet.folder_check import check_model_folder
    cases = list(job.images) if job.images is not None else collect_inputs(job.input)
    check_model_folder(job.model, job.folds)
    check_device(job.cfg)
    predictor = open_predictor(job)
    labels, stats = {}, {}
    for case, src in cases:
        res = predictor.run(src, series=job.series_pick)
        labels[case] = res.labels
        if job.statistics:
            stats[case] = case_statistics(predictor, res)
    return labels, (stats if job.statistics else None)


def case_statistics(predictor, res) -> dict:
    """Volumes and HU statistics of one predicted case (``res``: the predictor's
    :class:`Prediction`), as statistics.json holds them (docs/statistics.md)."""
    from flareseg.inference.statistics import label_statistics
    names = {i: n for n, i in predictor.model.labels.items()}
    arr = sitk.GetArrayViewFromImage(res.labels)
    spacing = tuple(reversed(res.labels.GetSpacing()))
    return label_statistics(arr, spacing, names, predictor.model.labels.get("tumor"),
                            image=sitk.GetArrayViewFromImage(res.image))   # the CT the predictor read


def _versions() -> dict:
    import torch
    from flareseg.versions import versions
    return versions() | {"cuda": torch.version.cuda if torch.cuda.is_available() else None}


def window_progress(case: str, show: bool):
    """``(progress(done, total), close())`` for one case's sliding windows: a tqdm bar of windows
    done / total when ``show`` (a TTY and not -q), nothing otherwise."""
    bar = tqdm(total=0, desc=case, unit="window", leave=False, disable=not show)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
    return progress, bar.close


def write_per_class(labels: sitk.Image, masks: dict[str, Path], index: dict[str, int]) -> None:
    """One uint8 0/1 mask per class name in ``masks`` (class -> path), on the label map's grid;
    ``index``: class name -> label value (the model's dataset.json labels)."""
    arr = sitk.GetArrayViewFromImage(labels)
    for name, dest in masks.items():
        img = sitk.GetImageFromArray((arr == index[name]).astype(np.uint8))
        img.CopyInformation(labels)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_image(img, dest)


def predict_cases(predictor, cases: Cases, plan: OutputPlan, job: PredictJob, **kwargs) -> dict:
    """:func:`_predict_cases` with every file written into ``plan.folder`` recorded in its ledger
    (:mod:`flareseg.write_guard`), so a rerun may replace them and nothing else (``job.overwrite``:
    files predict did not write may be replaced too, as :func:`check_predict` allowed)."""
    with write_guard.recording(plan.folder, "predict", job.overwrite):
        return _predict_cases(predictor, cases, plan, job, **kwargs)


def _predict_cases(predictor, cases: Cases, plan: OutputPlan, job: PredictJob, *,
                   load_seconds: float = 0.0, shared: bool = False, keep_freed_memory: bool | None = None,
                   ages: tuple[float | None, float | None] | None = None) -> dict:
    """Predict ``cases`` into ``plan``: one failing case is logged and reported, the others still
    run; writes the run report (and statistics.json, previews, per-class masks as ``plan`` lists
    them) and returns the report dict.  Progress bars (cases, windows within a case) show only
    when stderr is a terminal and not ``job.quiet``.
    ``shared`` (under torchrun): this process predicts its hash shard of ``cases`` only (each case
    by exactly one rank); rank 0 gathers the ranks' entries and writes the one report, in the
    order of ``cases``."""
    from flareseg import distributed as dist
    all_cases = list(cases)
    if shared and dist.world_size() > 1:
        from flareseg.cases import shard
        mine = set(shard([c for c, _ in all_cases], dist.rank(), dist.world_size()))
        cases = [(c, p) for c, p in all_cases if c in mine]

    t0 = time.perf_counter()
    show = not job.quiet and sys.stderr.isatty()
    report_cases, stats, failed = [], {}, 0
    for case, src in tqdm(cases, desc="predict", unit="case", disable=not show):
        dest = plan.labels[case]
        entry = {"case": case, "input": str(src) if isinstance(src, Path) else "<in-memory image>",
                 "output": str(dest)}
        progress, close = window_progress(case, show)
        try:
            t = time.perf_counter()
            try:
                res = predictor.run(src, save_probabilities=job.save_probabilities, progress=progress,
                                    series=job.series_pick)
            finally:
                close()
            write_image(res.labels, dest)
            if job.save_probabilities:
                _write_npz(res.probabilities, plan.probabilities[case])
            if job.statistics:
                stats[case] = case_statistics(predictor, res)
            if plan.previews:
                from flareseg.inference.preview import write_preview
                names = {i: n for n, i in predictor.model.labels.items()}
                write_preview(sitk.GetArrayViewFromImage(res.image), sitk.GetArrayViewFromImage(res.labels),
                              tuple(reversed(res.labels.GetSpacing())), names, plan.previews[case], title=case,
                              direction=res.labels.GetDirection())
            if plan.per_class:
                write_per_class(res.labels, plan.per_class[case], predictor.model.labels)
            if case in plan.dicom_segs:
                from flareseg.inference.dicom_seg import write_case_seg
                write_case_seg(res.labels, src, {i: n for n, i in predictor.model.labels.items()},
                               plan.dicom_segs[case], job.series_pick)
                entry["dicom_seg"] = str(plan.dicom_segs[case])
            entry.update(status="ok", seconds=round(time.perf_counter() - t, 4),
                         steps=res.stats["seconds"], windows=res.stats["windows"],
                         reoriented=res.stats["reoriented"])
        except (InputError, RuntimeError, ValueError, OSError) as e:
            failed += 1
            entry.update(status="failed", error=str(e))
            log.error("case %s failed: %s", case, e)
        report_cases.append(entry)

    if shared and dist.world_size() > 1:
        parts = dist.gather((report_cases, stats, failed))
        if not dist.is_main():
            dist.barrier()      # rank 0 writes the report
            return {"cases_ok": len(cases) - failed, "cases_failed": failed, "cases": report_cases}
        order = {c: i for i, (c, _) in enumerate(all_cases)}
        report_cases = sorted((e for part in parts for e in part[0]), key=lambda e: order[e["case"]])
        stats = {c: part[1][c] for c, _ in all_cases for part in parts if c in part[1]}
        failed = sum(part[2] for part in parts)
        cases = all_cases
    # the resolved inference config, once, and where each key that was set came from; device and
    # dtype: what they resolved to on this machine
    report = {"versions": _versions(), "device": str(predictor.device), "dtype": predictor.dtype_name,
              "dtype_reason": predictor.dtype_reason, "runtime": predictor.runtime,
              "runtime_model": predictor.runtime_model,
              "keep_freed_memory": keep_freed_memory,
              "model": str(predictor.model.model_dir), "folds": predictor.model.folds,
              "config": str(job.config) if job.config else None,
              "inference": to_dict(predictor.cfg), "inference_from": dict(job.inference_from),
              "model_load_seconds": round(load_seconds, 4),
              "total_seconds": round(load_seconds + time.perf_counter() - t0, 4),
              "cases_ok": len(cases) - failed, "cases_failed": failed, "cases": report_cases}
    if ages is not None:   # a command-line run (ages at its start and at the model load): its cold start
        from flareseg.inference.cold_start import cold_breakdown, process_age_seconds
        first = next((e.get("steps") for e in report_cases if e.get("status") == "ok"), None)
        report["cold_run_seconds"] = cold_breakdown(*ages, load_seconds, first, process_age_seconds())
    write_report(report, plan.report)
    if plan.statistics:
        write_json(stats, plan.statistics)
        write_guard.record(plan.statistics, command="predict")
    if shared:
        dist.barrier()
    return report


def write_report(report: dict, dest: Path) -> None:
    """Write the run report ``dest``, merged under a lock on its folder with the report already
    there when predict wrote it: that run's cases whose label maps are still predict's own stay
    listed (this run's entries win), so two runs into one folder at once both appear.
    ``cases_ok``/``cases_failed`` count the merged list."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with write_guard.locked(dest.parent):
        merged = dict(report)
        if write_guard.owns(dest, "predict"):
            try:
                old = read_json(dest)
                mine = {e["case"] for e in report["cases"]}
                kept = [e for e in old.get("cases", []) if e.get("case") not in mine and e.get("status") == "ok"
                        and write_guard.owns(e.get("output", ""), "predict")]
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                kept = []
            if kept:
                cases = kept + list(report["cases"])
                failed = sum(e.get("status") != "ok" for e in cases)
                merged.update(cases=cases, cases_ok=len(cases) - failed, cases_failed=failed,
                              cases_from_earlier_runs=len(kept))
        write_json(merged, dest)
        write_guard.record(dest, command="predict")


def _npz_problem(path: Path) -> str | None:
    """Why a just-written .npz is broken (not a complete zip archive), or None."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile) as e:
        return f"the written file does not read back ({e})"
    return f"the written file does not read back (member {bad} damaged)" if bad else None


def _write_npz(probabilities: np.ndarray, dest: Path) -> None:
    from flareseg.io import atomic_path
    with atomic_path(dest, verify=_npz_problem) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=probabilities)

