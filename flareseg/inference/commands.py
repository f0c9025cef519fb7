"""`flareseg predict`: label maps for CT files, folders or DICOM series with the fast predictor."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from flareseg.cases import list_cases
from flareseg.config import IMAGE_RESAMPLING, ConfigError, InferenceConfig, inference_config, load_config, to_dict
from flareseg.io import InputError, image_suffix, read_json, remove_stale_temps, write_image, write_json
from flareseg.write_guard import (UnsafeOutput, WritePlan, check_plan, folder_files, input_files,
                                  referenced_files, same_files)
from flareseg import write_guard

log = logging.getLogger(__name__)

EPILOG = """\
inputs:  a CT file (.nii.gz/.nii/.mha/.nrrd), a DICOM series folder, or a folder of either
         (nnU-Net channel files case_0000.nii.gz count as case; other channels are ignored).
outputs: OUT/<case>.nii.gz label maps on exactly the input grid (DICOM folder -> <folder>.nii.gz),
         OUT/predict_report.json (versions, device, seconds and skipped windows per case),
         with --statistics OUT/statistics.json (class volumes in mL, HU per class and per tumor
         component, tumor burden per case),
         with --save-probabilities OUT/<case>.npz (softmax, key "probabilities", (K, Z, Y, X)),
         with --preview OUT/<case>_preview.png (CT slices with the label overlay and legend),
         with --per-class / --roi-subset OUT/<case>/<class_name>.nii.gz (one 0/1 mask per class).
         A single input file with -o ending in .nii.gz writes exactly that file.
A case that fails is reported and skipped; the exit code is 1 if any case failed.

safety:  inputs are never written to. Before the model loads, predict refuses (exit 2) an -o equal
         to the input folder, and any output (label map, .npz, statistics.json, the report) whose
         path is an input file, the model's files, or the same file through a symlink or hard
         link; -o may be a subfolder of the input folder. An existing file of an output's name
         that predict did not write (no unchanged record in OUT/.flareseg-written.jsonl) is
         refused too unless --overwrite; predict's own outputs are replaced on a rerun. Two runs
         into one folder share the report (merged under a lock). A bad model folder (missing files,
         the parent of the real model folder, a fold_X folder, an absent --fold) also exits 2, as
         does an unknown, mistyped or out-of-range --config/--set key.
         Exit codes: 0 all written, 1 some cases failed (the rest written), 2 usage error.

settings: the inference section of --config FILE (InferenceConfig defaults otherwise), then each
         --set inference.KEY=VALUE, then the shortcut flags (--device, --no-skip, --tta, ...), each of
         which sets one inference key. The report lists the resolved inference config.

examples:
  flareseg predict -i scan.nii.gz -o out/ -m work/stage-6-ship/model
  flareseg predict -i /data/dicom/patient1 -o out/ -m work/stage-6-ship/model --device cpu --no-skip
  flareseg predict -i inputs/ -o outputs/ -m work/stage-6-ship/model --statistics --tta
  flareseg predict -i inputs/ -o outputs/ -m work/stage-6-ship/model --config my.yaml --set inference.step_size=0.7

"""

def collect_inputs(path: Path) -> list[tuple[str, Path]]:
    """(case name, input path) pairs for a file, a DICOM folder, or a folder of files/DICOM folders
    (the listing and naming rule of :mod:`flareseg.cases`)."""
    path = Path(path)
    out = list(list_cases(path, dicom=True).items())  # says why a path cannot be read (loop, FIFO, ...)
    if not out:
        raise InputError(path, "holds no image files or DICOM series")
    return out


@dataclass(frozen=True)
class OutputPlan:
    """Every path a predict run writes (``folder`` is created; the rest are files)."""

    folder: Path
    labels: dict[str, Path]          # case -> label map
    probabilities: dict[str, Path]   # case -> softmax .npz (with --save-probabilities)
    report: Path
    statistics: Path | None          # with --statistics
    previews: dict[str, Path] = field(default_factory=dict)               # case -> PNG (--preview)
    per_class: dict[str, dict[str, Path]] = field(default_factory=dict)   # case -> class -> mask

    @property
    def files(self) -> list[Path]:
        return [*self.labels.values(), *self.probabilities.values(), self.report,
                *([self.statistics] if self.statistics else []), *self.previews.values(),
                *(p for masks in self.per_class.values() for p in masks.values())]


def planned_outputs(cases: Sequence[tuple[str, Path]], input_path: str | os.PathLike, output: str | os.PathLike,
                    save_probabilities: bool = False, statistics: bool = False,
                    report: str | os.PathLike | None = None, preview: bool = False,
                    per_class: Sequence[str] | None = None) -> OutputPlan:
    """The outputs of ``flareseg predict`` for ``cases`` (from :func:`collect_inputs`): one input
    file with an image-suffixed ``output`` writes exactly that file, otherwise ``output`` is a folder.
    ``preview``: ``<case>_preview.png`` next to each label map; ``per_class``: the class names
    written as ``<folder>/<case>/<class>.nii.gz`` (None: no per-class masks)."""
    single_file = len(cases) == 1 and Path(input_path).is_file() and bool(image_suffix(output))
    folder = Path(output).parent if single_file else Path(output)
    labels = {c: Path(output) if single_file else folder / f"{c}.nii.gz" for c, _ in cases}
    probs = {c: folder / f"{c}.npz" for c, _ in cases} if save_probabilities else {}
    previews = {c: labels[c].parent / f"{c}_preview.png" for c, _ in cases} if preview else {}
    masks = {c: {n: folder / c / f"{n}.nii.gz" for n in per_class} for c, _ in cases} \
        if per_class is not None else {}
    return OutputPlan(folder, labels, probs, Path(report) if report else folder / "predict_report.json",
                      folder / "statistics.json" if statistics else None, previews, masks)


def roi_names(roi_subset: Sequence[str] | None, per_class: bool, valid: Sequence[str]) -> list[str] | None:
    """The class names written one mask per class: ``roi_subset`` (validated against ``valid``, the
    model's foreground class names, and returned in their order) or all of ``valid`` with
    ``per_class``; None when neither is asked for.  Raises :class:`flareseg.config.ConfigError`
    naming an unknown class and listing the valid names."""
    if roi_subset is None or len(roi_subset) == 0:
        return list(valid) if per_class else None
    unknown = [n for n in roi_subset if n not in valid]
    if unknown:
        raise ConfigError(f"--roi-subset {unknown[0]}: not a class name of the model "
                          f"(valid: {', '.join(valid)})")
    return [n for n in valid if n in set(roi_subset)]


def overlapping_paths(inputs: Iterable[str | os.PathLike],
                      outputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """``(output, input)`` pairs where the output is the input (:func:`flareseg.write_guard.same_files`)."""
    return same_files(inputs, outputs)


def _input_paths(input_path: Path, cases: Sequence[tuple[str, Path]], model: Path) -> list[Path]:
    """What predict reads: the -i path, each case (and the files of a DICOM series folder), the
    model folder and its files."""
    out = [input_path]
    for _, p in cases:
        out.append(p)
        out.extend(input_files([p]) if p.is_dir() else referenced_files(p))   # series files, .mhd data
    if model.is_dir():
        out += [model, *folder_files(model), *model.glob("fold_*/*")]
    return out


def write_plan(plan: OutputPlan, inputs: Sequence[Path], overwrite: bool = False) -> WritePlan:
    """The :class:`flareseg.write_guard.WritePlan` of a predict run: ``inputs`` (files and folders:
    the -i path, the cases, DICOM series files, the model folder's files) split into the files
    read and the input folders; -o may lie inside the input folder (its files are listed one
    level deep) and may hold it."""
    folders = [p for p in inputs if p.is_dir()]
    return WritePlan("predict", plan.folder, plan.files, reads=[p for p in inputs if not p.is_dir()],
                     input_folders=folders, overwrite=overwrite, out_inside_input=True, input_inside_out=True,
                     file_flags={plan.report: "--report"})


def _adopt_earlier_predict(folder: Path, report: str | os.PathLike | None) -> None:
    """Record as predict's own what a predict run wrote before ledgers existed: its run report
    names every label map it wrote (and the report and statistics.json are its own)."""
    rep_path = Path(report) if report else folder / "predict_report.json"
    if (folder / write_guard.LEDGER).exists() or not rep_path.is_file():
        return
    try:
        rep = read_json(rep_path)
        ok = [(str(e["case"]), Path(e["output"])) for e in rep["cases"] if e.get("status") == "ok"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    outputs = [f for case, p in ok   # the label map and what --preview/--save-probabilities/--per-class added
               for f in (p, p.parent / f"{case}_preview.png", folder / f"{case}.npz", *folder.glob(f"{case}/*.nii.gz"))]
    mine = [p for p in outputs if folder.resolve() in p.resolve().parents]
    write_guard.adopt([rep_path, folder / "statistics.json", *mine], "predict")


def check_outputs(plan: OutputPlan, inputs: Sequence[Path], overwrite: bool = False) -> str | None:
    """The reason predict must not write ``plan`` (one line naming both paths), or None: the write
    guard's rules (:func:`flareseg.write_guard.check_plan`), without the writability probe."""
    try:
        check_plan(write_plan(plan, inputs, overwrite), probe=False)
    except UnsafeOutput as e:
        return str(e)
    return None


def _versions() -> dict:
    import torch
    from flareseg.versions import versions
    return versions() | {"cuda": torch.version.cuda if torch.cuda.is_available() else None}


#: shortcut flag (argparse dest) -> (the InferenceConfig key it sets, the value an on/off flag sets;
#: None: the flag's parsed value)
FLAG_KEYS: dict[str, tuple[str, object]] = {
    "device": ("device", None), "no_skip": ("skip_windows", False), "skip_threshold": ("skip_threshold", None),
    "no_grow": ("skip_grow", False), "image_resampling": ("image_resampling", None), "tta": ("tta", True),
    "step_size": ("step_size", None), "batch_windows": ("batch_windows", None), "dtype": ("dtype", None),
    "no_crop": ("crop_to_body", False), "no_reorient": ("reorient", False), "runtime": ("runtime", None),
}


def resolve_inference(args: argparse.Namespace) -> InferenceConfig:
    """The run's :class:`InferenceConfig`: the defaults, then ``--config FILE``'s ``inference``
    section, then ``--set inference.KEY=VALUE``, then the shortcut flags given (each sets one key).
    Raises :class:`ConfigError` naming the file/option and key (exit 2)."""
    sets = list(getattr(args, "set", None) or [])
    for item in sets:
        key = item.split("=", 1)[0].strip()
        if not key.startswith("inference.") or "=" not in item:
            raise ConfigError(f"--set {item}: predict takes only inference.KEY=VALUE "
                              f"(keys: {', '.join(f.name for f in fields(InferenceConfig))})")
    cfg = load_config(getattr(args, "config", None), sets).inference
    flags = {}
    for dest, (key, const) in FLAG_KEYS.items():
        given = getattr(args, dest, None)
        if given is None or given is False:      # flag not given: the config's value stands
            continue
        flags[key] = given if const is None else const
    return inference_config(cfg, "command-line flags", **flags)


def check_predict(input_path: str | os.PathLike, output: str | os.PathLike, model: str | os.PathLike,
                  folds: Sequence[int | str] | None = None, save_probabilities: bool = False,
                  statistics: bool = False, report: str | os.PathLike | None = None,
                  preview: bool = False, per_class: bool = False, roi_subset: Sequence[str] | None = None,
                  overwrite: bool = False) -> tuple[list[tuple[str, Path]], OutputPlan]:
    """Every refusal of a predict run, before a folder is created or the model is loaded (the CLI
    and :func:`flareseg.predict` both call it): the cases and the :class:`OutputPlan`.  Raises
    :class:`InputError` (bad input, bad model folder), :class:`flareseg.config.ConfigError` (a
    ``roi_subset`` name the model does not have) or :class:`UnsafeOutput` (an output is an input,
    the model's files, written twice, or an existing file predict did not write, unless
    ``overwrite``)."""
    from flareseg.nnunet.folder_check import check_model_folder, model_class_names

    cases = collect_inputs(Path(input_path))
    if Path(output).is_dir():
        _adopt_earlier_predict(Path(output), report)

    def checked_plan(masks: Sequence[str] | None) -> OutputPlan:
        plan = planned_outputs(cases, input_path, output, save_probabilities, statistics, report, preview, masks)
        problem = check_outputs(plan, _input_paths(Path(input_path), cases, Path(model)), overwrite)
        if problem:
            raise UnsafeOutput(problem)
        return plan

    plan = checked_plan(None)      # an output onto an input is named first, whatever else is wrong
    check_model_folder(model, folds)
    masks = roi_names(roi_subset, per_class, model_class_names(model))   # the model's class names
    return cases, (plan if masks is None else checked_plan(masks))


def make_output_folder(plan: OutputPlan) -> list[Path]:
    """Create ``plan.folder`` (and parents) and remove what a killed earlier run left half-written;
    returns the folders created, to remove again if the model then fails to load.  OSError when
    the folder cannot be created or a file cannot be written into it (found here, before the model
    loads, not case by case)."""
    from flareseg.temp_names import check_writable
    created = [d for d in (plan.folder, *plan.folder.parents) if not d.exists()]
    plan.folder.mkdir(parents=True, exist_ok=True)
    try:
        check_writable(plan.folder)
    except OSError:
        remove_created(created)
        raise
    remove_stale_temps(plan.folder)
    write_guard.compact(plan.folder)
    return created


def remove_created(created: Sequence[Path]) -> None:
    """Remove the (empty) folders :func:`make_output_folder` created."""
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()


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


def predict_cases(predictor, cases: Sequence[tuple[str, Path]], plan: OutputPlan, overwrite: bool = False,
                  **kwargs) -> dict:
    """:func:`_predict_cases` with every file written into ``plan.folder`` recorded in its ledger
    (:mod:`flareseg.write_guard`), so a rerun may replace them and nothing else (``overwrite``:
    files predict did not write may be replaced too, as :func:`check_predict` allowed)."""
    with write_guard.recording(plan.folder, "predict", overwrite):
        return _predict_cases(predictor, cases, plan, **kwargs)


def _predict_cases(predictor, cases: Sequence[tuple[str, Path]], plan: OutputPlan, *,
                   save_probabilities: bool = False, statistics: bool = False, quiet: bool = False,
                   config: str | os.PathLike | None = None, load_seconds: float = 0.0,
                   shared: bool = False, keep_freed_memory: bool | None = None,
                   ages: tuple[float | None, float | None] | None = None) -> dict:
    """Predict ``cases`` into ``plan``: one failing case is logged and reported, the others still
    run; writes the run report (and statistics.json, previews, per-class masks as ``plan`` lists
    them) and returns the report dict.  Progress bars (cases, windows within a case) show only
    when stderr is a terminal and not ``quiet``.
    ``shared`` (under torchrun): this process predicts its hash shard of ``cases`` only (each case
    by exactly one rank); rank 0 gathers the ranks' entries and writes the one report, in the
    order of ``cases``."""
    from flareseg import distributed as dist
    all_cases = list(cases)
    if shared and dist.world_size() > 1:
        from flareseg.cases import shard
        mine = set(shard([c for c, _ in all_cases], dist.rank(), dist.world_size()))
        cases = [(c, p) for c, p in all_cases if c in mine]
    from flareseg.inference.statistics import label_statistics

    t0 = time.perf_counter()
    names = {i: n for n, i in predictor.model.labels.items()}
    tumor = predictor.model.labels.get("tumor")
    show = not quiet and sys.stderr.isatty()
    report_cases, stats, failed = [], {}, 0
    for case, path in tqdm(cases, desc="predict", unit="case", disable=not show):
        dest = plan.labels[case]
        entry = {"case": case, "input": str(path), "output": str(dest)}
        progress, close = window_progress(case, show)
        try:
            t = time.perf_counter()
            try:
                res = predictor.run(path, save_probabilities=save_probabilities, progress=progress)
            finally:
                close()
            write_image(res.labels, dest)
            if save_probabilities:
                _write_npz(res.probabilities, plan.probabilities[case])
            if statistics or plan.previews:
                arr = sitk.GetArrayViewFromImage(res.labels)
                spacing = tuple(reversed(res.labels.GetSpacing()))
                ct = sitk.GetArrayViewFromImage(res.image)   # the CT the predictor read, not read again
            if statistics:
                stats[case] = label_statistics(arr, spacing, names, tumor, image=ct)
            if plan.previews:
                from flareseg.inference.preview import write_preview
                write_preview(ct, arr, spacing, names, plan.previews[case], title=case,
                              direction=res.labels.GetDirection())
            if plan.per_class:
                write_per_class(res.labels, plan.per_class[case], predictor.model.labels)
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
    # the resolved inference config, once; device and dtype: what it resolved to on this machine
    report = {"versions": _versions(), "device": str(predictor.device), "dtype": predictor.dtype_name,
              "dtype_reason": predictor.dtype_reason, "runtime": predictor.runtime,
              "runtime_model": predictor.runtime_model,
              "keep_freed_memory": keep_freed_memory,
              "model": str(predictor.model.model_dir), "folds": predictor.model.folds,
              "config": str(config) if config else None,
              "inference": to_dict(predictor.cfg),
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


def run_predict(args: argparse.Namespace) -> int:
    from flareseg.inference.cold_start import process_age_seconds
    args.age_at_command = process_age_seconds()   # interpreter start + imports so far (cold-run report)
    try:
        cfg = resolve_inference(args)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    folds = [f.strip() for f in args.fold.split(",")] if args.fold else None
    try:   # every refusal happens here, before a folder is created or the model is loaded
        cases, plan = check_predict(args.input, args.output, args.model, folds, args.save_probabilities,
                                    args.statistics, args.report, args.preview, args.per_class, args.roi_subset,
                                    overwrite=getattr(args, "overwrite", False))
    except (InputError, UnsafeOutput, ConfigError) as e:
        log.error("%s", e)
        return 2
    import torch
    if cfg.device == "cuda" and not torch.cuda.is_available():
        log.error("--device cuda (inference.device): no CUDA device is available (use --device cpu or auto)")
        return 2
    from flareseg.inference.openvino_runtime import resolve_runtime
    run_on, problem = resolve_runtime(cfg.runtime, cfg.device)
    if problem:
        log.error("%s", problem)
        return 2
    kept = None
    if run_on.type == "cpu":   # this process is ours: windows reuse freed memory instead of page-faulting
        from flareseg.inference.cpu_memory import keep_freed_memory
        kept = keep_freed_memory()
    from flareseg import distributed as dist
    if dist.launched():   # torchrun: one device per rank, each rank its hash shard of the cases
        dist.init_from_env(cfg.device)
    try:
        created = dist.on_main(lambda: make_output_folder(plan))   # to undo on refusal
    except OSError as e:
        log.error("%s: cannot create or write into the output folder (%s)", plan.folder, e.strerror or e)
        return 2
    except dist.RankFailed:
        return 2

    from flareseg.inference.predictor import FastPredictor
    from flareseg.nnunet.model import ModelFolderError

    from flareseg.inference.cold_start import process_age_seconds
    args.age_at_load = process_age_seconds()
    t0 = time.perf_counter()
    try:
        predictor = FastPredictor(args.model, cfg, folds=folds, trust_model=getattr(args, "trust_model", False))
    except (InputError, ModelFolderError) as e:   # corrupt/untrusted checkpoint, inconsistent folder
        log.error("%s", e)
        dist.barrier()
        if dist.is_main():
            remove_created(created)                 # leave no empty output folders behind
        return 2
    report = predict_cases(predictor, cases, plan, save_probabilities=args.save_probabilities,
                           statistics=args.statistics, quiet=args.quiet,
                           config=getattr(args, "config", None), load_seconds=time.perf_counter() - t0,
                           shared=True, keep_freed_memory=kept, overwrite=getattr(args, "overwrite", False),
                           ages=(args.age_at_command, args.age_at_load))
    dist.shutdown()
    failed = report["cases_failed"]
    cases = [c for c in cases if c[0] in {e["case"] for e in report["cases"]}]
    print(f"{len(cases) - failed}/{len(cases)} cases written to {plan.folder}"
          + (f"; {failed} failed (see {plan.report.name})" if failed else ""))
    return 1 if failed else 0


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


def key_value(key: str):
    """argparse ``type=`` for the flag that sets ``inference.<key>``: the field's type (int or float)
    and its allowed range from :data:`flareseg.config.RANGES`, so a flag and the config key it sets
    have one bound; argparse's error names the flag (exit 2)."""
    from flareseg.config import RANGES
    kind = typing.get_type_hints(InferenceConfig)[key]
    allowed = RANGES["InferenceConfig"][key]
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} {allowed.describe()}, got {text!r}") from None
        if not allowed.contains(v):   # also false for NaN and inf
            what = f"{noun} " if kind is int else ""
            raise argparse.ArgumentTypeError(f"must be {what}{allowed.describe()}, got {text}")
        return v
    parse.__name__ = f"{noun} {allowed.describe()}"   # argparse's fallback message shows it
    return parse


def _choices(key: str) -> list[str]:
    """The allowed values of an InferenceConfig Literal field (the flag's choices)."""
    return list(typing.get_args(typing.get_type_hints(InferenceConfig)[key]))


def register(subparsers) -> None:
    D = InferenceConfig()   # the defaults the help shows (the flags themselves default to "not given")
    p = subparsers.add_parser(
        "predict", help="segment CT images with a trained model folder (fast predictor, GPU or CPU)",
        description="Predict FLARE23 label maps with an nnU-Net v2 model folder: resampling, "
                    "sliding window with window skipping and argmax run on the device.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="CT file, DICOM series folder, or folder of them")
    p.add_argument("-o", "--output", required=True, help="output folder (or .nii.gz file for one input file)")
    p.add_argument("-m", "--model", required=True,
                   help="nnU-Net model folder (dataset.json, plans.json, fold_X/checkpoint_final.pth)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML config whose inference section sets the predictor (a pipeline config or one "
                        "with only 'inference:'); see docs/pipeline.md for the keys")
    p.add_argument("--set", action="append", default=[], metavar="inference.KEY=VALUE",
                   help="override one inference key (repeatable); the flags below are shortcuts for these "
                        "and win over --config and --set")
    p.add_argument("--device", default=None, choices=_choices("device"), help=f"inference.device (default {D.device})")
    p.add_argument("--fold", default=None, help="fold(s) to use, e.g. 0 or 0,1,2 or all (default: every fold found)")
    p.add_argument("--no-skip", action="store_true",
                   help="predict every window (inference.skip_windows=false: window skipping off)")
    p.add_argument("--skip-threshold", type=key_value("skip_threshold"), default=None,
                   help="inference.skip_threshold: foreground voxels (>= 1) the indicator windows need to "
                        f"keep a plane (default {D.skip_threshold})")
    p.add_argument("--no-grow", action="store_true",
                   help="inference.skip_grow=false: skipping without the growth safeguard: do not run "
                        "skipped planes that touch foreground predicted next to them (faster, may cut organs "
                        "at the scan's ends)")
    p.add_argument("--image-resampling", default=None, choices=IMAGE_RESAMPLING,
                   help="inference.image_resampling, image to the model spacing: bspline (default) = stock "
                        "nnU-Net's order-3 spline computed "
                        "on the device, labels equal to nnUNetv2_predict's with --no-skip; linear = trilinear, "
                        "fastest on a CPU, boundaries differ slightly; nnunet = nnU-Net's own function on the CPU "
                        "(reference, slowest)")
    p.add_argument("--tta", action="store_true",
                   help="inference.tta=true: test-time mirroring over the model's allowed axes")
    p.add_argument("--step-size", type=key_value("step_size"), default=None,
                   help=f"inference.step_size: window step as a fraction of the patch, in (0, 1] (default {D.step_size})")
    p.add_argument("--batch-windows", type=key_value("batch_windows"), default=None,
                   help=f"inference.batch_windows: windows per network call, >= 0; 0 = auto: 4 on CUDA, 1 on a "
                        f"CPU, where batches are no faster and multiply memory (default {D.batch_windows})")
    p.add_argument("--dtype", default=None, choices=_choices("dtype"),
                   help=f"inference.dtype: network precision; auto = float16 on CUDA, bfloat16 on CPUs with "
                        f"AMX/AVX512-BF16, else float32; float16 on a CPU runs float32 (default {D.dtype})")
    p.add_argument("--runtime", default=None, choices=_choices("runtime"),
                   help=f"inference.runtime: what runs the network; torch, or openvino = OpenVINO on the CPU "
                        f"(~2x faster float32 there; needs pip install 'flareseg[openvino]'; the converted "
                        f"network is cached in ~/.cache/flareseg or $FLARESEG_CACHE_DIR) (default {D.runtime})")
    p.add_argument("--no-crop", action="store_true",
                   help="inference.crop_to_body=false: run every sliding window, not only those that meet "
                        "the body's bounding box")
    p.add_argument("--no-reorient", action="store_true",
                   help="inference.reorient=false: feed the array to the network in its stored axis order; by default an image "
                        "stored sagittally/coronally or with permuted axes (per its direction matrix) is "
                        "permuted into axial layout for prediction and the labels permuted back (output "
                        "geometry is the input's either way; flips and obliquity are never changed)")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz softmax maps")
    p.add_argument("--statistics", action="store_true",
                   help="write class volumes, HU statistics per class and per tumor component, tumor burden "
                        "(statistics.json; schema in docs/statistics.md)")
    p.add_argument("--preview", action="store_true",
                   help="also write <case>_preview.png next to each label map: axial and coronal CT slices "
                        "(W400/L40) with the label overlay and a legend of the class names")
    p.add_argument("--per-class", action="store_true",
                   help="also write one 0/1 mask per class, OUT/<case>/<class_name>.nii.gz, on the input grid")
    p.add_argument("--roi-subset", nargs="+", default=None, metavar="NAME",
                   help="the classes written as per-class masks (implies --per-class), e.g. liver tumor; "
                        "the model's class names (its dataset.json labels; FLARE23's for a flareseg model)")
    p.add_argument("--report", default=None, help="run report path (default OUT/predict_report.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing files of the same names that predict did not write (by default "
                        "such a file is refused, exit 2; predict's own outputs of an earlier run are replaced "
                        "either way)")
    p.add_argument("--trust-model", action="store_true",
                   help="load checkpoints that need more than tensors and numpy numbers (plain unpickling: "
                        "code in the model folder can run; only for folders from a source you trust)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (they show only when stderr is a terminal: cases, and windows "
                        "done/total within a case)")
    p.set_defaults(func=run_predict)
    from flareseg.dicom import add_series_option
    add_series_option(p)
