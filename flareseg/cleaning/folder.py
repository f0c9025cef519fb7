"""Clean every label map of a folder: non-destructive, reported, idempotent.

Layout written under ``out_dir``::

    labels/<input file name>     cleaned copy, same geometry and dtype as the input
    cases/<case>.json            sidecar: config hash, input/image/output digests, removals
    cleaning_report.csv          every removal (case, class, class name, voxels, mm³, reason, ...)
    cleaning_summary.csv         one row per case (status, counts per reason, error)

A case is skipped (its removals read back from the sidecar) when the sidecar's config hash and
input digest match, the CT digest matches for a case that needs the CT (tumor but no organs), and
the cleaned file still has the digest recorded; so a rerun with the same inputs and config writes
identical reports.  Inputs are only ever read.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from flareseg.cleaning.clean import clean_label
from flareseg.cleaning.records import Removal
from flareseg.cleaning.report import CaseResult, CleaningReport, write_reports
from flareseg.cases import folder_entries
from flareseg.config import CleaningConfig, Config, config_hash
from flareseg.file_check import IMAGE_SUFFIXES
from flareseg.image_check import ct_plausibility_problem, nonfinite_count, nonfinite_problem
from flareseg.io import (InputError, file_digest, geometry_mismatch,
                         read_array, read_json, strip_suffix, write_array,
                         write_json)
from flareseg.labels import ORGANS, TUMOR
from flareseg import write_guard
from flareseg.write_guard import LEDGER, WritePlan, check_plan, input_files

log = logging.getLogger(__name__)
SIDECAR_VERSION = 1


def find_image(images_dir: Path | None, case: str) -> Path | None:
    """The CT of ``case`` in ``images_dir``: ``<case>_0000.<ext>`` (nnU-Net) or ``<case>.<ext>``."""
    if images_dir is None:
        return None
    for stem in (f"{case}_0000", case):
        for suf in IMAGE_SUFFIXES:
            p = images_dir / f"{stem}{suf}"
            if p.is_file():
                return p
    return None


def list_labels(labels_dir: Path) -> list[Path]:
    """Label files of a folder (the listing rule of :mod:`flareseg.cases`, no channel suffix),
    sorted by name; two files of one case both appear (the caller reports the second)."""
    if not Path(labels_dir).is_dir():
        raise InputError(labels_dir, "labels folder does not exist")
    return sorted(p for paths in folder_entries(labels_dir, channel_suffix=False).values() for p in paths)


def clean_plan(labels_dir: Path, out: Path, images: Path | None, files: list[Path],
               overwrite: bool = False) -> WritePlan:
    """The :class:`flareseg.write_guard.WritePlan` of a clean run: every cleaned label, sidecar and
    report against every label file and every file of the images folder; ``--out`` may not lie
    inside an input folder."""
    outs = [out / "labels" / p.name for p in files] + [out / "cases" / f"{strip_suffix(p)}.json" for p in files]
    outs += [out / "cleaning_report.csv", out / "cleaning_summary.csv"]
    outs = list(dict.fromkeys(outs))   # two files of one case: one sidecar (the second is an error)
    folders = [labels_dir] + ([images] if images is not None else [])
    reads = input_files(files) + (input_files([images]) if images is not None and images.is_dir() else [])
    return WritePlan("clean", out, outs, reads=reads, input_folders=folders, overwrite=overwrite,
                     out_inside_input=False, input_inside_out=True, flag="--out",
                     input_names={labels_dir: "--labels folder", **({images: "--images folder"} if images else {})})


def adopt_earlier_clean(out: Path) -> None:
    """Record as clean's own what a clean run wrote before ledgers existed: cleaned labels whose
    digest their sidecar records, those sidecars and the two reports."""
    if (out / LEDGER).exists() or not (out / "cases").is_dir():
        return
    mine: list[Path] = []
    for sidecar in (out / "cases").glob("*.json"):
        try:
            meta = read_json(sidecar)
            dest = out / "labels" / meta["input"]
            if dest.is_file() and file_digest(dest) == meta["output_digest"]:
                mine += [dest, sidecar]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if mine:
        write_guard.adopt(mine + [out / "cleaning_report.csv", out / "cleaning_summary.csv"], "clean")


def clean_folder(labels_dir: os.PathLike | str, out_dir: os.PathLike | str,
                 cfg: CleaningConfig | Config, images_dir: os.PathLike | str | None = None,
                 force: bool = False, overwrite: bool = False) -> CleaningReport:
    """Clean every label map of ``labels_dir`` into ``out_dir`` (layout in the module docstring).

    ``images_dir`` (optional) holds the CTs, used for the body mask of cases without organs; a CT
    that is read must pass the predictor's checks (finite values, CT plausibility: most voxels
    within :data:`flareseg.image_check.CT_HU_RANGE`), else its case is an error.
    ``force`` recomputes cases even when their sidecar is current.  Bad files are reported in
    the summary with status ``error`` and skipped.  Returns the :class:`CleaningReport`.
    Before any work the write guard (:func:`clean_plan`) raises
    :class:`flareseg.write_guard.UnsafeOutput` for an output that is an input file, lands in an
    input folder, or would replace a file clean did not write (unless ``overwrite``).
    """
    cfg = getattr(cfg, "cleaning", cfg)
    labels_dir, out = Path(labels_dir), Path(out_dir)
    images = Path(images_dir) if images_dir is not None else None
    files = list_labels(labels_dir)
    if out.is_dir():
        adopt_earlier_clean(out)
    check_plan(clean_plan(labels_dir, out, images, files, overwrite))
    with write_guard.recording(out, "clean", overwrite):
        write_guard.compact(out)
        return _clean_files(files, out, cfg, images, force)


def _clean_files(files: list[Path], out: Path, cfg: CleaningConfig, images: Path | None,
                 force: bool) -> CleaningReport:
    chash = config_hash(cfg)
    results, seen = [], set()
    for path in tqdm(files, desc="cleaning", unit="case", disable=len(files) < 2):
        case = strip_suffix(path)
        if case in seen:
            results.append(CaseResult(case, path.name, "error",
                                      error="duplicate case id (same name, other suffix)"))
            continue
        seen.add(case)
        try:
            results.append(_clean_case(path, case, out, cfg, chash, find_image(images, case),
                                       force))
        except (InputError, ValueError, OSError, RuntimeError) as e:
            msg = str(e) if isinstance(e, InputError) else f"{path}: {e}"
            log.error("skipping %s", msg)
            results.append(CaseResult(case, path.name, "error", error=msg))
    report = write_reports(results, out)
    log.info("cleaned %d cases (%d up to date, %d errors), %d components removed -> %s",
             len(results), report.reused, len(report.errors), len(report.records),
             report.report_csv)
    return report


def _clean_case(path: Path, case: str, out: Path, cfg: CleaningConfig, chash: str,
                image_path: Path | None, force: bool) -> CaseResult:
    dest = out / "labels" / path.name
    sidecar = out / "cases" / f"{case}.json"
    key = {"version": SIDECAR_VERSION, "config_hash": chash, "input": path.name,
           "input_digest": file_digest(path)}
    if not force and (reused := _reuse(sidecar, key, dest, image_path)) is not None:
        log.debug("%s: up to date", case)
        return reused
    label, geom = read_array(path)
    clean_in = _as_label(label, path)
    needs_image = _needs_image(clean_in, cfg)
    image, image_digest = None, None
    if image_path is not None and needs_image:
        image, igeom = read_array(image_path)
        if bad := geometry_mismatch(geom, igeom):
            raise InputError(image_path, "image grid differs from label: " + "; ".join(bad))
        if why := nonfinite_problem(nonfinite_count(image)) or ct_plausibility_problem(image):
            raise InputError(image_path, why)   # the body mask of a garbage CT would be garbage
        image_digest = file_digest(image_path)
    elif needs_image:
        log.warning("%s: tumor but no organs and no CT found, abdominal-region rule skipped", case)
    cleaned, records = clean_label(clean_in, geom.spacing_zyx, cfg, image=image, case_id=case)
    write_array(cleaned.astype(label.dtype, copy=False), geom, dest)
    result = CaseResult(case, path.name, "ok", int(np.count_nonzero(clean_in)), records)
    write_json({**key, "needs_image": needs_image, "image_digest": image_digest,
                "output_digest": file_digest(dest), "foreground_voxels": result.foreground_voxels,
                "spacing_zyx": geom.spacing_zyx, "records": [r.row() for r in records]}, sidecar)
    return result


def _reuse(sidecar: Path, key: dict[str, Any], dest: Path,
           image_path: Path | None) -> CaseResult | None:
    """The stored result if the sidecar matches ``key`` (and the CT, for a case that uses one)
    and the cleaned file is intact; otherwise None."""
    if not sidecar.is_file() or not dest.is_file():
        return None
    try:
        meta = read_json(sidecar)
        if any(meta.get(k) != v for k, v in key.items()):
            return None
        if meta["needs_image"] and meta["image_digest"] != (
                file_digest(image_path) if image_path is not None else None):
            return None
        if meta["output_digest"] != file_digest(dest):
            return None
        records = [Removal.from_row(r) for r in meta["records"]]
        return CaseResult(sidecar.stem, key["input"], "ok", int(meta["foreground_voxels"]),
                          records, reused=True)
    except (ValueError, KeyError, TypeError, OSError):
        return None


def _as_label(label: np.ndarray, path: Path) -> np.ndarray:
    """Integer FLARE23 label map (uint8) of a read array, or InputError naming ``path``."""
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise InputError(path, "label map holds non-integer values")
    elif label.dtype.kind not in "ui":
        raise InputError(path, f"label map has unsupported dtype {label.dtype}")
    lo, hi = (float(label.min()), float(label.max())) if label.size else (0.0, 0.0)
    if lo < 0 or hi > TUMOR:
        raise InputError(path, f"label values {lo:g}..{hi:g} outside the FLARE23 classes 0..{TUMOR}")
    return label.astype(np.uint8, copy=False)


def _needs_image(label: np.ndarray, cfg: CleaningConfig) -> bool:
    """The CT is only used for the body mask: tumor present, no organ, region rule on."""
    if not cfg.remove_outside_abdomen:
        return False
    counts = np.bincount(label.ravel(), minlength=TUMOR + 1)
    return bool(counts[TUMOR] > 0 and counts[list(ORGANS)].sum() == 0)
