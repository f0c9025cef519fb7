"""Where a predict run writes and whether it may: the cases of an input, the output plan (every
path a run writes), the write guard's refusals before any work, and the output folder's creation.
`flareseg predict` and :func:`flareseg.predict` both plan through here (:mod:`flareseg.inference.batch`)."""
from __future__ import annotations

import contextlib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from flareseg.cases import list_cases
from flareseg.config import ConfigError
from flareseg.io import InputError, image_suffix, read_json, remove_stale_temps
from flareseg.write_guard import (UnsafeOutput, WritePlan, check_plan, folder_files, input_files,
                                  referenced_files)
from flareseg import write_guard

if typing.TYPE_CHECKING:   # a case's input: a path (file or DICOM series folder) or an in-memory image
    import SimpleITK as sitk

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
    dicom_segs: dict[str, Path] = field(default_factory=dict)   # DICOM case -> SEG (--output-format dicom-seg)

    @property
    def files(self) -> list[Path]:
        return [*self.labels.values(), *self.probabilities.values(), self.report,
                *([self.statistics] if self.statistics else []), *self.previews.values(),
                *(p for masks in self.per_class.values() for p in masks.values()), *self.dicom_segs.values()]


def planned_outputs(cases: Sequence[tuple[str, Path | sitk.Image]], input_path: str | os.PathLike | None, output: str | os.PathLike,
                    save_probabilities: bool = False, statistics: bool = False,
                    report: str | os.PathLike | None = None, preview: bool = False,
                    per_class: Sequence[str] | None = None, dicom_seg: bool = False) -> OutputPlan:
    """The outputs of ``flareseg predict`` for ``cases`` (from :func:`collect_inputs`): one input
    file (or one in-memory image: ``input_path`` None) with an image-suffixed ``output`` writes
    exactly that file, otherwise ``output`` is a folder.
    ``preview``: ``<label map>_preview.png`` next to each label map (named after it); ``per_class``:
    the class names written as ``<folder>/<case>/<class>.nii.gz`` (None: no per-class masks);
    ``dicom_seg``: ``<label map>.dcm`` (DICOM SEG) next to the label map of each DICOM series case."""
    from flareseg.inference.dicom_seg import seg_path
    from flareseg.inference.preview import preview_path
    single_file = (len(cases) == 1 and (input_path is None or Path(input_path).is_file())
                   and bool(image_suffix(output)))
    folder = Path(output).parent if single_file else Path(output)
    labels = {c: Path(output) if single_file else folder / f"{c}.nii.gz" for c, _ in cases}
    probs = {c: folder / f"{c}.npz" for c, _ in cases} if save_probabilities else {}
    previews = {c: preview_path(labels[c]) for c, _ in cases} if preview else {}
    masks = {c: {n: folder / c / f"{n}.nii.gz" for n in per_class} for c, _ in cases} \
        if per_class is not None else {}
    segs = {c: seg_path(labels[c]) for c, p in cases if isinstance(p, Path) and p.is_dir()} if dicom_seg else {}
    return OutputPlan(folder, labels, probs, Path(report) if report else folder / "predict_report.json",
                      folder / "statistics.json" if statistics else None, previews, masks, segs)


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


def _input_paths(input_path: Path | None, cases: Sequence[tuple[str, Path | sitk.Image]], model: Path) -> list[Path]:
    """What predict reads: the -i path, each case (and the files of a DICOM series folder), the
    model folder and its files (an in-memory case reads no file)."""
    out = [input_path] if input_path is not None else []
    for _, p in cases:
        if not isinstance(p, Path):
            continue
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
    from flareseg.inference.preview import preview_path
    outputs = [f for case, p in ok   # the label map and what --preview/--save-probabilities/--per-class added
               for f in (p, preview_path(p), folder / f"{case}.npz", *folder.glob(f"{case}/*.nii.gz"))]
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



def check_predict(input_path: str | os.PathLike | None, output: str | os.PathLike, model: str | os.PathLike,
                  folds: Sequence[int | str] | None = None, save_probabilities: bool = False,
                  statistics: bool = False, report: str | os.PathLike | None = None,
                  preview: bool = False, per_class: bool = False, roi_subset: Sequence[str] | None = None,
                  overwrite: bool = False, cases: Sequence[tuple[str, Path | sitk.Image]] | None = None,
                  dicom_seg: bool = False) -> tuple[list[tuple[str, Path | sitk.Image]], OutputPlan]:
    """Every refusal of a predict run, before a folder is created or the model is loaded (the CLI
    and :func:`flareseg.predict` both call it): the cases and the :class:`OutputPlan`.  Raises
    :class:`InputError` (bad input, bad model folder), :class:`flareseg.config.ConfigError` (a
    ``roi_subset`` name the model does not have) or :class:`UnsafeOutput` (an output is an input,
    the model's files, written twice, or an existing file predict did not write, unless
    ``overwrite``).  ``cases``: in-memory images to write instead of ``input_path``'s (None).
    ``dicom_seg``: also a DICOM SEG per DICOM series case (:class:`ConfigError` when the input holds
    no DICOM series or highdicom is missing)."""
    from flareseg.nnunet.folder_check import check_model_folder, model_class_names

    cases = collect_inputs(Path(input_path)) if cases is None else list(cases)
    source = Path(input_path) if input_path is not None else None
    if Path(output).is_dir():
        _adopt_earlier_predict(Path(output), report)

    def checked_plan(masks: Sequence[str] | None) -> OutputPlan:
        plan = planned_outputs(cases, input_path, output, save_probabilities, statistics, report, preview, masks,
                               dicom_seg)
        problem = check_outputs(plan, _input_paths(source, cases, Path(model)), overwrite)
        if problem:
            raise UnsafeOutput(problem)
        return plan

    plan = checked_plan(None)      # an output onto an input is named first, whatever else is wrong
    if dicom_seg:
        from flareseg.inference.dicom_seg import require_dicom_seg
        require_dicom_seg(plan.dicom_segs)
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

