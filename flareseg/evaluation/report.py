"""Evaluation reports: per-case CSV, JSON summary and a printable table."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from flareseg.config import EvaluationConfig, to_dict
from flareseg.evaluation.result import EvaluationResult
from flareseg.io import read_json, write_json, write_text
from flareseg.labels import CLASS_NAMES
from flareseg import write_guard
from flareseg.write_guard import WritePlan, input_files

REPORT_FILES = ("per_case.csv", "summary.json", "summary.txt")


def _num(x: float) -> float | None:
    """JSON-safe float (NaN -> null)."""
    return None if x is None or math.isnan(x) else round(float(x), 6)


def _pair(p: tuple[float, float]) -> dict:
    return {"dsc": _num(p[0]), "nsd": _num(p[1])}


def summary_dict(res: EvaluationResult, cfg: EvaluationConfig | None = None) -> dict:
    """Plain dict of the summary: means per class, organ, tumor, overall, plus case bookkeeping."""
    out = {
        "n_cases": len(res.scores),
        "per_class": {str(c): {"name": CLASS_NAMES[c], **_pair(v)} for c, v in res.per_class().items()},
        "organ_mean": _pair(res.organ),
        "tumor": _pair(res.tumor),
        "overall": _pair(res.overall),
        "cases": sorted(res.scores),
        "missing": res.missing,
        "extra": res.extra,
        "errors": res.errors,
    }
    if cfg is not None:
        out["config"] = to_dict(cfg)
    return out


def per_case_csv(res: EvaluationResult) -> str:
    """CSV text with columns ``case,class,name,dsc,nsd`` (one row per case and class)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["case", "class", "name", "dsc", "nsd"], lineterminator="\n")
    w.writeheader()
    for r in res.rows():
        w.writerow({**r, "dsc": f"{r['dsc']:.6f}", "nsd": f"{r['nsd']:.6f}"})
    return buf.getvalue()


def format_table(res: EvaluationResult) -> str:
    """Human-readable table of per-class means and the organ/tumor/overall rows."""
    def f(x: float) -> str:
        return "   n/a" if math.isnan(x) else f"{x:6.4f}"

    lines = [f"{'class':>5}  {'name':<22} {'DSC':>6}  {'NSD':>6}", "-" * 44]
    for c, (d, n) in res.per_class().items():
        lines.append(f"{c:>5}  {CLASS_NAMES[c]:<22} {f(d)}  {f(n)}")
    lines.append("-" * 44)
    for label, (d, n) in (("organ mean (1-13)", res.organ), ("tumor (14)", res.tumor),
                          ("overall", res.overall)):
        lines.append(f"{'':>5}  {label:<22} {f(d)}  {f(n)}")
    lines.append(f"cases scored: {len(res.scores)}")
    if res.missing:
        lines.append(f"missing predictions ({len(res.missing)}): {', '.join(res.missing)}")
    if res.extra:
        lines.append(f"predictions without reference ({len(res.extra)}): {', '.join(res.extra)}")
    for case, why in sorted(res.errors.items()):
        lines.append(f"error {case}: {why}")
    return "\n".join(lines) + "\n"


def report_plan(pred: os.PathLike | str, gt: os.PathLike | str, out_dir: os.PathLike | str,
                overwrite: bool = False) -> WritePlan:
    """The :class:`flareseg.write_guard.WritePlan` of the reports: the three files against every
    file of ``pred`` and ``gt`` (folders or files); ``--out`` may not lie inside either folder."""
    pred, gt, out = Path(pred), Path(gt), Path(out_dir)
    if out.is_dir():
        adopt_earlier_reports(out)
    folders = [p for p in (pred, gt) if p.is_dir()]
    reads = input_files([pred, gt])
    return WritePlan("evaluate", out, [out / n for n in REPORT_FILES], reads=reads, input_folders=folders,
                     overwrite=overwrite, out_inside_input=False, input_inside_out=True, flag="--out",
                     input_names={pred: "--pred folder", gt: "--gt folder"})


def adopt_earlier_reports(out_dir: os.PathLike | str) -> None:
    """Record as evaluate's own the reports an earlier flareseg wrote before ledgers existed: a
    summary.json with evaluate's keys proves the folder's three report files are its own."""
    out = Path(out_dir)
    if (out / write_guard.LEDGER).exists() or not (out / "summary.json").is_file():
        return
    try:
        summary = read_json(out / "summary.json")
    except (OSError, ValueError):
        return
    if isinstance(summary, dict) and {"per_class", "organ_mean", "overall", "cases"} <= set(summary):
        write_guard.adopt([out / n for n in REPORT_FILES], "evaluate")


def write_reports(res: EvaluationResult, out_dir: os.PathLike | str,
                  cfg: EvaluationConfig | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json`` and ``summary.txt`` into ``out_dir`` atomically,
    each recorded in the folder's ledger (:mod:`flareseg.write_guard`); a file there that evaluate
    did not write is refused unless ``overwrite``."""
    out = Path(out_dir)
    with write_guard.recording(out, "evaluate", overwrite):
        return {
            "per_case": write_text(per_case_csv(res), out / "per_case.csv"),
            "summary": write_json(summary_dict(res, cfg), out / "summary.json"),
            "table": write_text(format_table(res), out / "summary.txt"),
        }
