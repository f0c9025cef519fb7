"""`flareseg import`: FLARE23-style folders -> an nnU-Net v2 raw dataset plus label types.

Input layout (any image format SimpleITK reads, or one DICOM series folder per case)::

    labeled images   <case>_0000.nii.gz | <case>.nii.gz | <case>/ (DICOM)
    labels           <case>.nii.gz
    unlabeled images same naming as labeled images
    manifest (opt.)  CSV ``case_id,annotated`` e.g. ``FLARE23_0001,1 2 3 4 13 14``

Output (``out_dir`` = ``nnUNet_raw/DatasetNNN_Name``)::

    imagesTr/<case>_0000.nii.gz   labelsTr/<case>.nii.gz   dataset.json
    imagesUnlabeled/<case>_0000.nii.gz
    label_types.json   case -> annotated classes (labeled and tumor-only cases)
    cases.json         {"labeled": [...], "tumor_only": [...], "unlabeled": [...]}
    import_report.json every case: status, pool, label type and its source; bad cases with reason

A case whose outputs were already written from the same source files is not redone (resume).
"""
from __future__ import annotations

import csv
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from flareseg.data.validate import check_case
from flareseg.io import (InputError, case_id_from_name, link_or_copy, image_suffix, is_dicom_dir, read_json,
                         write_image, write_json)
from flareseg.labels import CLASS_NAMES, pool_of, str_to_type, type_to_str

log = logging.getLogger(__name__)


class ImportFailed(RuntimeError):
    """Raised in strict mode when any case is bad."""


@dataclass
class SourceCase:
    case_id: str
    image: Path
    label: Path | None = None


@dataclass
class ImportReport:
    dataset_dir: Path
    cases: dict[str, dict] = field(default_factory=dict)
    label_type_source: str = "labels"

    @property
    def bad(self) -> dict[str, dict]:
        return {k: v for k, v in self.cases.items() if v["status"] == "error"}

    @property
    def good(self) -> dict[str, dict]:
        return {k: v for k, v in self.cases.items() if v["status"] == "ok"}


def discover_images(folder: Path, channel_suffix: bool = True) -> dict[str, Path]:
    """Image files (known suffixes) and DICOM series folders in ``folder``, keyed by case id
    (``channel_suffix=False`` for label folders, see :func:`case_id_from_name`)."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        raise InputError(folder, "is not a folder")
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if (p.is_file() and image_suffix(p)) or (p.is_dir() and is_dicom_dir(p)):
            cid = case_id_from_name(p, channel_suffix)
            if cid in out:
                raise InputError(p, f"duplicate case id {cid!r} (also {out[cid].name})")
            out[cid] = p
    return out


def read_manifest(path: Path) -> dict[str, tuple[int, ...]]:
    """CSV ``case_id,annotated`` -> case -> label type. Errors name the file and line."""
    out: dict[str, tuple[int, ...]] = {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:2]] != ["case_id", "annotated"]:
        raise InputError(path, "manifest must start with the header 'case_id,annotated'")
    for i, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        if len(row) < 2:
            raise InputError(path, f"line {i}: expected 'case_id,annotated'")
        try:
            out[row[0].strip()] = str_to_type(row[1])
        except ValueError as e:
            raise InputError(path, f"line {i}: {e}") from None
    return out


def pair_cases(images_dir: Path | None, labels_dir: Path | None,
               unlabeled_dir: Path | None) -> tuple[list[SourceCase], list[SourceCase], dict[str, str]]:
    """Match labeled images with labels by case id. Returns (labeled, unlabeled, problems)."""
    labeled: list[SourceCase] = []
    problems: dict[str, str] = {}
    if images_dir is not None:
        imgs = discover_images(images_dir)
        labs = discover_images(labels_dir, channel_suffix=False) if labels_dir is not None else {}
        for cid, p in imgs.items():
            if cid not in labs:
                problems[cid] = f"{p}: no label file for case {cid} in {labels_dir}"
                continue
            labeled.append(SourceCase(cid, p, labs[cid]))
        for cid, p in labs.items():
            if cid not in imgs:
                problems[cid] = f"{p}: label without an image in {images_dir}"
    unlabeled = ([SourceCase(cid, p) for cid, p in discover_images(unlabeled_dir).items()]
                 if unlabeled_dir is not None else [])
    return labeled, unlabeled, problems


def _source_stamp(c: SourceCase) -> list:
    def st(p: Path | None):
        if p is None:
            return None
        if p.is_dir():
            files = sorted(p.iterdir())
            return [str(p), len(files), sum(f.stat().st_size for f in files)]
        s = p.stat()
        return [str(p), s.st_size, s.st_mtime_ns]
    return [st(c.image), st(c.label)]


def _import_one(args: tuple) -> dict:
    """Worker: validate one case and write it into the dataset. Returns its report record."""
    c, annotated, out_dir, unlabeled = args
    out_dir = Path(out_dir)
    rec_path = out_dir / ".import" / f"{c.case_id}.json"
    stamp = _source_stamp(c)
    if rec_path.exists():
        rec = read_json(rec_path)
        if rec.get("source") == stamp and rec.get("annotated_in") == (list(annotated) if annotated is not None else None):
            return rec
    rec: dict = {"case_id": c.case_id, "image": str(c.image),
                 "label": str(c.label) if c.label else None, "source": stamp,
                 "annotated_in": list(annotated) if annotated is not None else None}
    try:
        checked = check_case(c.image, c.label, annotated)
        img_dir = "imagesUnlabeled" if unlabeled else "imagesTr"
        img_out = out_dir / img_dir / f"{c.case_id}_0000.nii.gz"
        if image_suffix(c.image) == ".nii.gz":
            link_or_copy(c.image, img_out)   # validated as is: no re-encoding, no second copy on disk
        else:
            write_image(checked.image, img_out)
        if checked.label is not None:
            write_image(checked.label, out_dir / "labelsTr" / f"{c.case_id}.nii.gz")
        ltype = tuple(annotated) if annotated is not None else checked.classes_present
        rec.update(status="ok", notes=checked.notes,
                   label_type=None if unlabeled else list(ltype),
                   pool="unlabeled" if unlabeled else pool_of(ltype),
                   size=list(checked.image.GetSize()), spacing=list(checked.image.GetSpacing()))
        if not unlabeled and not ltype:
            rec.update(status="error", reason=f"{c.label}: label is empty (no annotated class)")
    except InputError as e:
        rec.update(status="error", reason=str(e))
    except Exception as e:  # unexpected library failure: still one case, still reported
        rec.update(status="error", reason=f"{c.image}: {type(e).__name__}: {e}")
    write_json(rec, rec_path)
    return rec


def dataset_json(num_training: int) -> dict:
    return {"channel_names": {"0": "CT"},
            "labels": {name: idx for idx, name in CLASS_NAMES.items()},
            "numTraining": num_training, "file_ending": ".nii.gz",
            "description": "imported by flareseg (partially labeled FLARE23 layout)"}


def import_dataset(out_dir: Path, images_dir: Path | None = None, labels_dir: Path | None = None,
                   unlabeled_dir: Path | None = None, manifest: Path | None = None,
                   strict: bool = False, num_processes: int = 1) -> ImportReport:
    """Validate and import every case; bad cases are reported, the rest imported."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labeled, unlabeled, problems = pair_cases(images_dir, labels_dir, unlabeled_dir)
    types = read_manifest(manifest) if manifest is not None else None
    report = ImportReport(out_dir, label_type_source="manifest" if types is not None else "labels")
    if types is None and labeled:
        log.warning("no manifest: label types are inferred from the label values present "
                    "(an absent organ then counts as unannotated)")
    for cid, why in problems.items():
        report.cases[cid] = {"case_id": cid, "status": "error", "reason": why}
    jobs = []
    for c in labeled:
        ann = None
        if types is not None:
            if c.case_id not in types:
                report.cases[c.case_id] = {"case_id": c.case_id, "status": "error",
                                           "reason": f"{manifest}: no row for case {c.case_id}"}
                continue
            ann = types[c.case_id]
        jobs.append((c, ann, str(out_dir), False))
    jobs += [(c, None, str(out_dir), True) for c in unlabeled]
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(num_processes) as ex:
            recs = list(tqdm(ex.map(_import_one, jobs), total=len(jobs), desc="import", unit="case"))
    else:
        recs = [_import_one(j) for j in tqdm(jobs, desc="import", unit="case")]
    for r in recs:
        report.cases[r["case_id"]] = r
    for cid, r in sorted(report.bad.items()):
        log.error("skipped %s: %s", cid, r["reason"])
        _remove_outputs(out_dir, cid)
    if strict and report.bad:
        raise ImportFailed(f"{len(report.bad)} bad case(s); first: {next(iter(report.bad.values()))['reason']}")
    _write_indexes(report)
    return report


def _remove_outputs(out_dir: Path, cid: str) -> None:
    for p in (out_dir / "imagesTr" / f"{cid}_0000.nii.gz", out_dir / "labelsTr" / f"{cid}.nii.gz",
              out_dir / "imagesUnlabeled" / f"{cid}_0000.nii.gz"):
        if p.exists():
            p.unlink()


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
                "label_type_note": ("from the manifest" if report.label_type_source == "manifest" else
                                    "inferred from the label values present (no manifest): an absent organ "
                                    "is treated as unannotated"),
                "n_ok": len(good), "n_bad": len(report.bad),
                "pools": {k: len(v) for k, v in pools.items()},
                "label_type_counts": counts,
                "bad": [{"case_id": k, "reason": v["reason"]} for k, v in sorted(report.bad.items())],
                "cases": {k: {kk: vv for kk, vv in v.items() if kk != "source"}
                          for k, v in sorted(report.cases.items())}},
               out_dir / "import_report.json")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


