"""`flareseg import`: FLARE23-style folders -> an nnU-Net v2 raw dataset plus label types.

Input layout (any image format SimpleITK reads, or one DICOM series folder per case)::

    labeled images   <case>_0000.nii.gz | <case>.nii.gz | <case>/ (DICOM)
    labels           <case>.nii.gz
    unlabeled images same naming as labeled images
    manifest (opt.)  CSV ``case_id,annotated`` e.g. ``FLARE23_0001,1 2 3 4 13 14``, or the FLARE23
                     authors' ``case_to_partial_type.json`` (``{"FLARE23_0001": "1_2_3_4_13_14"}``)
    types (opt.)     per-case overrides, CSV or JSON as above: only the cases listed

Output (``out_dir`` = ``nnUNet_raw/DatasetNNN_Name``)::

    imagesTr/<case>_0000.nii.gz   labelsTr/<case>.nii.gz   dataset.json
    imagesUnlabeled/<case>_0000.nii.gz
    label_types.json   case -> annotated classes (labeled and tumor-only cases)
    cases.json         {"labeled": [...], "tumor_only": [...], "unlabeled": [...]}
    import_report.json every case: status, pool, label type and its source; bad cases with reason

A case whose outputs were already written from the same source files is not redone (resume).
The dataset folder always describes exactly this run's good cases: outputs an earlier import wrote
for cases that are bad (or no longer given) are removed, so dataset.json, label_types.json and cases.json match imagesTr,
labelsTr and imagesUnlabeled file for file.  Problems with the arguments (missing folder, nothing to
import, a case id both labeled and unlabeled, a bad manifest row, an unusable ``out_dir``) raise
before anything is written; with ``strict`` every case is validated before anything is written.
An ``out_dir`` that is not empty must be an earlier import (its ledger ``.flareseg-written.jsonl``
records the files it wrote): a user's own dataset folder is refused, never cleaned up.
"""
from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from flareseg.data.label_types import rare_types, read_types, type_table
from flareseg.data.sources import ImportConfigError, SourceCase, pair_cases, read_manifest
from flareseg.data.validate import check_case
from flareseg.io import (InputError, image_suffix, link_or_copy, read_json, remove_stale_temps, write_image,
                         write_json)
from flareseg.inference.orientation import axial_reorientation, canonical_image
from flareseg.labels import CLASS_NAMES, pool_of, type_to_str
from flareseg import write_guard
from flareseg.write_guard import LEDGER, WritePlan, check_plan, input_files

log = logging.getLogger(__name__)

__all__ = ["ImportConfigError", "ImportFailed", "ImportReport", "SourceCase", "check_out_dir",
           "dataset_folder_name", "dataset_json", "import_dataset", "read_manifest"]

OUTPUT_FOLDERS = ("imagesTr", "labelsTr", "imagesUnlabeled")
INDEX_FILES = ("label_types.json", "cases.json", "dataset.json", "import_report.json")


@dataclass
class ImportReport:
    dataset_dir: Path
    cases: dict[str, dict] = field(default_factory=dict)
    label_type_source: str = "labels"
    #: labeled case -> where its type came from: ``override``, ``manifest`` or ``labels``
    type_from: dict[str, str] = field(default_factory=dict)

    def label_types(self) -> dict[str, list[int]]:
        """Good labeled (and tumor-only) case -> its label type."""
        return {cid: r["label_type"] for cid, r in sorted(self.good.items()) if r.get("pool") != "unlabeled"}

    def type_lines(self) -> list[str]:
        """The table of this import's label types (counts, words, rare ones named)."""
        types = self.label_types()
        return type_table(types, {c: self.type_from.get(c, "labels") for c in types})

    @property
    def bad(self) -> dict[str, dict]:
        return {k: v for k, v in self.cases.items() if v["status"] == "error"}

    @property
    def good(self) -> dict[str, dict]:
        return {k: v for k, v in self.cases.items() if v["status"] == "ok"}


class ImportFailed(RuntimeError):
    """Strict mode: some case is bad, nothing was written. ``report`` holds every case."""

    def __init__(self, message: str, report: ImportReport):
        super().__init__(message)
        self.report = report


def import_plan(out_dir: Path, labeled: list[SourceCase], unlabeled: list[SourceCase],
                inputs: Iterable[Path | None]) -> WritePlan:
    """The :class:`flareseg.write_guard.WritePlan` of an import: every case's outputs, resume
    records and the index files; the files read (images, DICOM series files, labels, manifest)
    and the input folders.  ``--out`` may neither lie inside nor hold an input folder, and must be
    new, empty or an earlier import (its ledger says so)."""
    files = [p for c in labeled for p in _outputs(out_dir, c.case_id, False)]
    files += [p for c in unlabeled for p in _outputs(out_dir, c.case_id, True)]
    files += [out_dir / ".import" / f"{c.case_id}.json" for c in (*labeled, *unlabeled)]
    files += [out_dir / n for n in INDEX_FILES]
    reads: list[Path] = []
    folders = [Path(p) for p in inputs if p is not None and Path(p).is_dir()]
    for c in (*labeled, *unlabeled):
        for p in (c.image, c.label):
            if p is None:
                continue
            if p.is_dir():
                folders.append(p)
            reads += input_files([p])   # a DICOM folder's files, a header's data file
    reads += [Path(p) for p in inputs if p is not None and not Path(p).is_dir()]
    return WritePlan("import", out_dir, files, reads=reads, input_folders=folders, out_inside_input=False,
                     input_inside_out=False, flag="--out", exclusive="import")


def check_out_dir(out_dir: Path, inputs: Iterable[Path | None]) -> None:
    """Raise :class:`flareseg.write_guard.UnsafeOutput` unless ``out_dir`` can be created or reused as a dataset folder without
    touching an input (the folder-level rules of :func:`import_plan`; the file-level ones need
    the cases, see :func:`import_dataset`)."""
    plan = import_plan(Path(out_dir), [], [], inputs)
    plan.exclusive, plan.files = None, []   # judged once earlier imports are recognised
    check_plan(plan)


def _adopt_earlier_import(out_dir: Path, labeled: list[SourceCase], unlabeled: list[SourceCase]) -> None:
    """Record as import's own what an import wrote before ledgers existed (its ``.import`` records
    name the cases), and dataset files that are hard links of their own source image (replacing
    such a link by a link to the same file changes no byte)."""
    mine: list[Path] = []
    if not (out_dir / LEDGER).exists() and (out_dir / ".import").is_dir():
        for rec in (out_dir / ".import").glob("*.json"):
            try:
                r = read_json(rec)
            except (OSError, ValueError):
                continue
            mine.append(rec)
            if isinstance(r, dict) and r.get("status") == "ok":
                mine += _outputs(out_dir, rec.stem, r.get("pool") == "unlabeled")
        mine += [out_dir / n for n in INDEX_FILES]
    for c, unl in [(c, False) for c in labeled] + [(c, True) for c in unlabeled]:
        img = _outputs(out_dir, c.case_id, unl)[0]
        with contextlib.suppress(OSError):
            if c.image.is_file() and os.path.samefile(img, c.image):
                mine.append(img)
    if mine:
        write_guard.adopt(mine, "import")


def _source_stamp(c: SourceCase) -> list:
    def st(p: Path | None):
        if p is None:
            return None
        try:
            if p.is_dir():
                files = sorted(p.iterdir())
                return [str(p), len(files), sum(f.stat().st_size for f in files)]
            s = p.stat()
            return [str(p), s.st_size, s.st_mtime_ns]
        except OSError:  # vanished or unreadable: never matches a record, the check reports it
            return [str(p), None]
    return [st(c.image), st(c.label)]


def _outputs(out_dir: Path, cid: str, unlabeled: bool) -> list[Path]:
    if unlabeled:
        return [out_dir / "imagesUnlabeled" / f"{cid}_0000.nii.gz"]
    return [out_dir / "imagesTr" / f"{cid}_0000.nii.gz", out_dir / "labelsTr" / f"{cid}.nii.gz"]


def _import_one(args: tuple) -> dict:
    """Worker: validate one case and (``write``) write it into the dataset. Returns its record.

    A case already imported from the same files (same record, outputs present) is not redone."""
    c, annotated, out_dir, unlabeled, reorient, write = args
    out_dir = Path(out_dir)
    rec_path = out_dir / ".import" / f"{c.case_id}.json"
    ann = list(annotated) if annotated is not None else None
    stamp = _source_stamp(c)
    if c.problem is None and rec_path.exists():
        rec = read_json(rec_path)
        if (rec.get("source") == stamp and rec.get("annotated_in") == ann
                and rec.get("reorient", False) == reorient
                and (rec.get("status") != "ok" or all(p.exists() for p in _outputs(out_dir, c.case_id, unlabeled)))):
            return rec
    rec: dict = {"case_id": c.case_id, "image": str(c.image),
                 "label": str(c.label) if c.label else None, "source": stamp, "annotated_in": ann,
                 "reorient": reorient}
    try:
        checked = check_case(c.image, c.label, annotated)
        if c.problem is not None:        # the image is fine: now its missing/bad label or manifest row
            rec.update(status="error", reason=c.problem)
            return rec
        ltype = tuple(annotated) if annotated is not None else checked.classes_present
        if not unlabeled and not ltype:
            raise InputError(c.label, "label is empty (no annotated class)")
        rec.update(status="ok", notes=checked.notes,
                   label_type=None if unlabeled else list(ltype),
                   pool="unlabeled" if unlabeled else pool_of(ltype),
                   size=list(checked.image.GetSize()), spacing=list(checked.image.GetSpacing()))
        turn = reorient and not axial_reorientation(checked.image.GetDirection(), canonical=True).is_identity
        rec["reoriented"] = turn
        if write:
            img_out = _outputs(out_dir, c.case_id, unlabeled)[0]
            if image_suffix(c.image) == ".nii.gz" and not turn:
                link_or_copy(c.image, img_out)   # validated as is: no re-encoding, no second copy on disk
            else:
                write_image(canonical_image(checked.image) if turn else checked.image, img_out)
            if checked.label is not None:
                write_image(canonical_image(checked.label) if turn else checked.label,
                            _outputs(out_dir, c.case_id, False)[1])
    except InputError as e:
        rec.update(status="error", reason=str(e))
    except Exception as e:  # unexpected library failure: still one case, still reported
        rec.update(status="error", reason=f"{c.image}: {type(e).__name__}: {e}")
    if write and c.problem is None:
        write_json(rec, rec_path)
    return rec


def dataset_json(num_training: int) -> dict:
    return {"channel_names": {"0": "CT"},
            "labels": {name: idx for idx, name in CLASS_NAMES.items()},
            "numTraining": num_training, "file_ending": ".nii.gz",
            "description": "imported by flareseg (partially labeled FLARE23 layout)"}


def import_dataset(out_dir: Path, images_dir: Path | None = None, labels_dir: Path | None = None,
                   unlabeled_dir: Path | None = None, manifest: Path | None = None,
                   strict: bool = False, num_processes: int = 1,
                   types_override: Path | None = None, reorient: bool = True) -> ImportReport:
    """Validate and import every case; bad cases are reported (logged and in the report), the rest
    imported.

    ``reorient``: images and labels whose direction is not (nearest) the identity are written
    permuted and flipped to it (LPS ascending; the same voxels at the same physical positions,
    nothing resampled), so every training case has one orientation and left and right mean the
    same array side (:func:`flareseg.inference.orientation.canonical_image`; the predictor does the
    same, ``inference.reorient``).  Others are linked or copied as they are.

    A labeled case's type comes from ``types_override`` when it lists the case, else from the
    ``manifest`` (CSV or the authors' JSON; with a manifest, a case without an entry is bad), else
    from the classes present in its label (:mod:`flareseg.data.label_types`).

    Raises before writing anything: InputError / ImportConfigError for unusable arguments (see the
    module docstring), :class:`flareseg.write_guard.UnsafeOutput` for an ``out_dir`` that overlaps an
    input folder, is a file, cannot be written, or is a non-empty folder that is not an earlier
    import, or an output that is an input file; ImportFailed when ``strict`` and any case is bad.
    Only files an earlier import wrote (its ledger, :mod:`flareseg.write_guard`) are ever replaced
    or removed."""
    out_dir = Path(out_dir)
    inputs = (images_dir, labels_dir, unlabeled_dir, manifest, types_override)
    check_out_dir(out_dir, inputs)   # an --out under a file or around an input: before reading inputs
    labeled, unlabeled, problems, labeled_ids = pair_cases(images_dir, labels_dir, unlabeled_dir)
    if out_dir.is_dir():
        _adopt_earlier_import(out_dir, labeled, unlabeled)
    # every output against every input file and every file import did not write
    check_plan(import_plan(out_dir, labeled, unlabeled, inputs))
    unlabeled_ids = {c.case_id for c in unlabeled}
    types = read_types(manifest, labeled_ids, unlabeled_ids) if manifest is not None else None
    overrides = read_types(types_override, labeled_ids, unlabeled_ids) if types_override is not None else {}
    report = ImportReport(out_dir, label_type_source=("manifest" if types is not None else "labels")
                          + ("+override" if types_override is not None else ""))
    if types is None and labeled and types_override is None:
        log.warning("no manifest: label types are inferred from the label values present "
                    "(an absent organ then counts as unannotated)")
    for cid, why in problems.items():
        report.cases[cid] = {"case_id": cid, "status": "error", "reason": why}
    jobs = []
    for c in labeled:
        ann, report.type_from[c.case_id] = overrides.get(c.case_id), "override"
        if ann is None and types is not None:
            ann, report.type_from[c.case_id] = types.get(c.case_id), "manifest"
            if ann is None and c.problem is None:
                c.problem = f"{manifest}: no row for case {c.case_id}"
        elif ann is None:
            report.type_from[c.case_id] = "labels"
        jobs.append((c, ann, str(out_dir), False, reorient))
    jobs += [(c, None, str(out_dir), True, reorient) for c in unlabeled]
    if strict:   # validate everything first: nothing is written unless every case is good
        _collect(report, _run(jobs, False, num_processes, "check"))
        if report.bad:
            _log_bad(report)
            raise ImportFailed(f"{len(report.bad)} bad case(s), nothing imported", report)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir, recursive=True)   # what a killed earlier import left half-written
    write_guard.compact(out_dir)
    with write_guard.recording(out_dir, "import"):
        _collect(report, _run(jobs, True, num_processes, "import"))
        # worker processes record what they write; files of good cases are import's either way
        # (every planned output was checked above: none was foreign)
        write_guard.adopt([p for cid, r in report.good.items()
                           for p in _outputs(out_dir, cid, r["pool"] == "unlabeled")], "import")
        _log_bad(report)
        _reconcile(report)
        _write_indexes(report)
    return report


def _run(jobs: list[tuple], write: bool, num_processes: int, desc: str) -> list[dict]:
    jobs = [j + (write,) for j in jobs]
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(num_processes) as ex:
            return list(tqdm(ex.map(_import_one, jobs), total=len(jobs), desc=desc, unit="case"))
    return [_import_one(j) for j in tqdm(jobs, desc=desc, unit="case")]


def _collect(report: ImportReport, recs: list[dict]) -> None:
    for r in recs:
        report.cases[r["case_id"]] = r


def _log_bad(report: ImportReport) -> None:
    for cid, r in sorted(report.bad.items()):
        log.error("skipped case %s: %s", cid, r["reason"])


def _reconcile(report: ImportReport) -> None:
    """Remove dataset files (and resume records) that an earlier import wrote and that belong to
    no good case of this run, so the indexes written next list exactly what is on disk.  Only
    files the ledger records as import's own and unchanged are removed; any other file stays
    (a warning names it)."""
    out_dir = report.dataset_dir
    keep = {p for cid, r in report.good.items() for p in _outputs(out_dir, cid, r["pool"] == "unlabeled")}
    for sub in OUTPUT_FOLDERS:
        for p in sorted((out_dir / sub).glob("*.nii.gz")):
            if p not in keep and not p.name.startswith(".") and write_guard.remove_owned(p, "import"):
                log.info("removed %s: not a good case of this import", p)
    for p in sorted((out_dir / ".import").glob("*.json")):
        if p.stem not in report.cases:
            write_guard.remove_owned(p, "import")


def _write_indexes(report: ImportReport) -> None:
    out_dir = report.dataset_dir
    good = report.good
    types = {cid: r["label_type"] for cid, r in sorted(good.items()) if r["pool"] != "unlabeled"}
    pools: dict[str, list[str]] = {"labeled": [], "tumor_only": [], "unlabeled": []}
    for cid, r in sorted(good.items()):
        pools[r["pool"]].append(cid)
    write_json(types, out_dir / "label_types.json")
    write_json(pools, out_dir / "cases.json")
    write_json(dataset_json(len(types)), out_dir / "dataset.json")
    counts: dict[str, int] = {}
    for t in types.values():
        counts[type_to_str(t)] = counts.get(type_to_str(t), 0) + 1
    write_json({"label_type_source": report.label_type_source,
                "label_type_note": (("from the manifest" if report.label_type_source.startswith("manifest") else
                                     "inferred from the label values present (no manifest): an absent organ "
                                     "is treated as unannotated")
                                    + ("; the cases the override file lists take its types"
                                       if report.label_type_source.endswith("+override") else "")),
                "n_ok": len(good), "n_bad": len(report.bad),
                "pools": {k: len(v) for k, v in pools.items()},
                "label_type_counts": counts,
                "label_type_from": {c: report.type_from.get(c, "labels") for c in types},
                "rare_label_types": rare_types(types),
                "label_type_table": report.type_lines(),
                "bad": [{"case_id": k, "reason": v["reason"]} for k, v in sorted(report.bad.items())],
                "cases": {k: {kk: vv for kk, vv in v.items() if kk != "source"}
                          for k, v in sorted(report.cases.items())}},
               out_dir / "import_report.json")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


