"""Validation overlays for the QC page: the worst and best validation cases by mean DSC."""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from flareseg.file_check import IMAGE_SUFFIXES
from flareseg.io import InputError, read_array
from flareseg.report import html as H
from flareseg.report.context import ReportContext
from flareseg.report.figures import validation_overlay

log = logging.getLogger(__name__)


def case_mean_dsc(rows: Sequence[Mapping[str, str]]) -> dict[str, float]:
    """Mean DSC over the scored classes of each case, from ``per_case.csv`` rows (case, class, dsc)."""
    vals: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        try:
            d = float(r["dsc"])
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isnan(d):
            vals[r["case"]].append(d)
    return {c: sum(v) / len(v) for c, v in vals.items() if v}


def worst_and_best(means: Mapping[str, float]) -> list[tuple[str, str, float]]:
    """[("worst", case, dsc), ("best", case, dsc)]; one entry when there is one case; ties by name."""
    if not means:
        return []
    order = sorted(means, key=lambda c: (means[c], c))
    picks = [("worst", order[0])] + ([("best", order[-1])] if len(order) > 1 else [])
    return [(tag, c, means[c]) for tag, c in picks]


def find_image(folder: Path, case: str) -> Path:
    """``<case>_0000<suffix>`` (nnU-Net channel naming) or ``<case><suffix>`` in ``folder``."""
    for name in (f"{case}_0000", case):
        for suffix in IMAGE_SUFFIXES:
            if (folder / f"{name}{suffix}").exists():
                return folder / f"{name}{suffix}"
    raise InputError(folder, f"no image for case {case}")


def validation_overlays(ctx: ReportContext, per_case_rows: Sequence[Mapping[str, str]]) -> list[str]:
    """HTML figures (prediction vs reference) for the worst and best validation cases."""
    s1 = ctx.result(1)
    img_dir, lab_dir = ctx.path(s1.get("validation_images")), ctx.path(s1.get("validation_labels"))
    if img_dir is None or lab_dir is None:
        return [H.para("validation images/labels of stage-1 not found: no overlays", "note")]
    out = []
    for tag, case, dsc in worst_and_best(case_mean_dsc(per_case_rows)):
        pred_p = ctx.stage(6) / "predictions" / f"{case}.nii.gz"
        ref_p = lab_dir / f"{case}.nii.gz"
        try:
            image, _ = read_array(find_image(img_dir, case))
            pred, _ = read_array(pred_p)
            ref, _ = read_array(ref_p)
            dest, href = ctx.new_asset(6, f"validation_{tag}_{case}.png")
            validation_overlay(image, pred, ref, dest, f"{tag}: {case}, mean DSC {dsc:.3f}")
            out.append(H.figure(href, f"{tag} case {case}: mean DSC {dsc:.3f} (left prediction, right reference)"))
        except (InputError, OSError, ValueError) as e:
            log.warning("QC report: no overlay for %s: %s", case, e)
            out.append(H.para(f"{tag} case {case}: no overlay ({e})", "error"))
    return out
