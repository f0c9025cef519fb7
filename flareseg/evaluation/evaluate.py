"""Folder-level FLARE23 evaluation: match cases by name, score each pair, summarise.

Case names are file names without the image suffix and without a trailing ``_0000`` channel tag,
so ``case_01_0000.nii.gz`` (an input image name) and ``case_01.nii.gz`` (its label) match.
A case whose prediction is unreadable or not on the reference's grid is reported with the reason
and the remaining cases are still evaluated.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from flareseg.config import EvaluationConfig
from flareseg.evaluation.metrics import evaluate_case, evaluate_case_official
from flareseg.evaluation.report import write_reports
from flareseg.evaluation.result import EvaluationResult
from flareseg.cases import case_name, list_cases
from flareseg.io import Geometry, InputError, geometry_mismatch, read_array
from flareseg.labels import FOREGROUND, TUMOR

log = logging.getLogger(__name__)


def match_cases(pred: os.PathLike | str, gt: os.PathLike | str) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pair predictions with references by case name.

    Returns ``(pairs, missing, extra)``: ``(case, pred_path, gt_path)`` triples, reference cases
    without a prediction, and predictions without a reference.  Two single files always pair.
    """
    if Path(pred).is_file() and Path(gt).is_file():
        return [(case_name(gt), Path(pred), Path(gt))], [], []
    p, g = list_cases(pred), list_cases(gt)
    pairs = [(c, p[c], g[c]) for c in sorted(g) if c in p]
    return pairs, sorted(set(g) - set(p)), sorted(set(p) - set(g))


def read_label(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read an integer label map ``(Z, Y, X)``; float files must hold whole numbers, and every value
    must be a FLARE23 class 0..14 (else :class:`InputError` naming the file and the bad values)."""
    arr, geo = read_array(path)
    if arr.dtype.kind == "f":
        if not np.all(np.mod(arr, 1) == 0):
            raise InputError(path, "label map holds non-integer values")
        arr = arr.astype(np.int32)
    elif arr.dtype.kind not in "iub":
        raise InputError(path, f"label map has unsupported voxel type {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > TUMOR):
        bad = np.unique(arr[(arr < 0) | (arr > TUMOR)])
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        raise InputError(path, f"label values {shown} outside the FLARE23 classes 0..{TUMOR}")
    return arr, geo


def evaluate_pair(pred_path: Path, gt_path: Path, cfg: EvaluationConfig = EvaluationConfig(),
                  classes: Sequence[int] = FOREGROUND) -> dict[int, tuple[float, float]]:
    """Score one prediction file against its reference file (spacing from the reference).

    Raises :class:`InputError` naming both files when the prediction is not on the reference grid.
    Under ``cfg.rules == "flare23-official"`` only the array shapes must agree, as in the official
    script: a prediction whose header (spacing, origin, direction) differs is scored with the
    reference's spacing, and a warning names what differs.
    """
    ref, g_geo = read_label(gt_path)
    pred, p_geo = read_label(pred_path)
    why = geometry_mismatch(g_geo, p_geo)
    official = cfg.rules == "flare23-official"
    if why and not (official and pred.shape == ref.shape):
        raise InputError(pred_path, f"not on the grid of reference {gt_path}: " + "; ".join(why)
                         + " (reference vs prediction)")
    if why:
        log.warning("%s: header differs from reference %s (%s); scored on the reference's grid and "
                    "spacing as the official script does", pred_path, gt_path, "; ".join(why))
    if official:
        return evaluate_case_official(pred, ref, g_geo.spacing_zyx, cfg, classes, case=case_name(gt_path))
    return evaluate_case(pred, ref, g_geo.spacing_zyx, cfg, classes)


def evaluate_folders(pred_dir: os.PathLike | str, gt_dir: os.PathLike | str,
                     cfg: EvaluationConfig = EvaluationConfig(), out_dir: os.PathLike | str | None = None,
                     classes: Sequence[int] = FOREGROUND, missing_as_zero: bool = False,
                     overwrite: bool = False) -> EvaluationResult:
    """Evaluate every prediction in ``pred_dir`` against the reference of the same case in ``gt_dir``.

    ``pred_dir``/``gt_dir`` may also be two single files.  With ``missing_as_zero`` a reference
    case without prediction scores 0 for every class (the challenge rule) instead of being left
    out of the means.  With ``out_dir`` the reports (``per_case.csv``, ``summary.json``,
    ``summary.txt``) are written there atomically.  Raises :class:`InputError` when a folder is
    missing or ``gt_dir`` holds no reference (nothing to evaluate), and
    :class:`flareseg.write_guard.UnsafeOutput` before any work when a report would land among the
    inputs or replace a file evaluate did not write (unless ``overwrite``).
    """
    if out_dir is not None:
        from flareseg.evaluation.report import report_plan
        from flareseg.write_guard import check_plan
        check_plan(report_plan(pred_dir, gt_dir, out_dir, overwrite))
    pairs, missing, extra = match_cases(pred_dir, gt_dir)
    if not pairs and not missing:
        raise InputError(gt_dir, "holds no reference label files (.nii.gz/.nii/.mha/.nrrd): "
                                 "nothing to evaluate")
    res = EvaluationResult(classes=tuple(classes), missing=missing, extra=extra)
    if missing:
        log.warning("%d reference case(s) without prediction in %s: %s", len(missing), pred_dir, ", ".join(missing))
    if extra:
        log.warning("%d prediction(s) without reference in %s: %s", len(extra), gt_dir, ", ".join(extra))
    for case, p, g in tqdm(pairs, desc="evaluate", unit="case", disable=len(pairs) < 2):
        try:
            res.scores[case] = evaluate_pair(p, g, cfg, classes)
        except (InputError, ValueError, OSError) as e:
            log.error("case %s: %s", case, e)
            res.errors[case] = str(e)
    if missing_as_zero:
        for case in missing:
            res.scores[case] = {c: (0.0, 0.0) for c in classes}
    if out_dir is not None:
        write_reports(res, out_dir, cfg, overwrite=overwrite)
    return res
