"""One HTML section per pipeline stage, drawn from what the stage wrote into the work folder.

Each builder takes ``(ctx, manifest)`` and returns an HTML fragment; missing optional files are
skipped with a note.  Builders never write outside ``ctx.out``.
"""
from __future__ import annotations

import csv
import logging
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

from flareseg.cto.cutmix import paste_rate_warning
from flareseg.io import read_json
from flareseg.labels import CLASS_NAMES, str_to_type
from flareseg.nnunet.env import NNUNetPaths
from flareseg.report import html as H
from flareseg.report.context import ReportContext
from flareseg.report.figures import describe_type, label_type_bar
from flareseg.report.validation import validation_overlays

log = logging.getLogger(__name__)

#: how many rows of long tables (selection ranking, cases) the page shows; the CSV has all
HEAD_ROWS = 15


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(s: Any) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _cell(column: str, value: str | None) -> Any:
    """selection.csv cell: ranks as integers, scores as floats, flags as text."""
    v = _num(value)
    if v is None or not column.endswith(("score", "rank")):
        return value
    return int(v) if column.endswith("rank") else v


def _h3(text: str) -> str:
    return f"<h3>{H.esc(text)}</h3>\n"


def _download(ctx: ReportContext, n: int, path: Path, text: str) -> str:
    return "<p>" + H.link(ctx.asset(path, n), text) + "</p>\n" if path.exists() else ""


def _missing(path: Path) -> str:
    return H.para(f"{path.name} not found ({path})", "note")


def _training(tr: dict) -> str:
    """Training summary and validation pseudo-Dice per class (nnU-Net's online estimate)."""
    if not tr:
        return H.para("no training record", "note")
    out = H.kv_table({"trainer": tr.get("trainer"), "epochs": tr.get("epochs"),
                      "final train loss": tr.get("final_train_loss"),
                      "final validation loss": tr.get("final_val_loss")})
    dice = tr.get("val_pseudo_dice") or {}
    if dice:
        out += H.table(("class", "validation pseudo-Dice"), list(dice.items()),
                       "nnU-Net's online validation pseudo-Dice at the last epoch "
                       "(–: not measured, class absent from the validation patches)")
    return out


# --------------------------------------------------------------------------- stage 1

def imported_types(ctx: ReportContext) -> str:
    """Stage-1 before its manifest (import done, training not yet): the label types the import
    ended with, from ``import_report.json`` (cases per type, where the types came from, rare ones)."""
    reports = sorted(NNUNetPaths.under(ctx.stage(1)).raw.glob("*/import_report.json"))
    if not reports:
        return ""
    rep = read_json(reports[-1])
    counts = rep.get("label_type_counts") or {}
    rare = rep.get("rare_label_types") or {}
    sources = Counter((rep.get("label_type_from") or {}).values())
    rows = [(k, describe_type(str_to_type(k)), v, ", ".join(rare.get(k, [])))
            for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return (_h3("label types (import finished; training not yet)")
            + H.para(f"{rep.get('n_ok')} cases imported, {rep.get('n_bad')} rejected; types from "
                     + (", ".join(f"{k}: {v}" for k, v in sorted(sources.items())) or rep.get("label_type_source", "?")))
            + H.table(("label type", "classes", "cases", "rare: cases"), rows))



def stage1(ctx: ReportContext, man: dict) -> str:
    r = man.get("result") or {}
    imp = r.get("import") or {}
    parts = [_h3("data import"),
             H.kv_table({"imported cases": imp.get("ok"), "rejected cases": imp.get("bad"),
                         "label types from": imp.get("label_type_source"), "dataset": r.get("dataset")})]
    ds = ctx.path(r.get("dataset"))
    if ds is None:
        parts.append(H.para(f"dataset folder {r.get('dataset')} not found", "note"))
    else:
        if (ds / "cases.json").exists():
            pools = read_json(ds / "cases.json")
            parts.append(H.table(("pool", "cases"), [(k, len(v)) for k, v in pools.items()]))
        lt = ds / "label_types.json"
        if lt.exists():
            types = read_json(lt)
            dest, href = ctx.new_asset(1, "label_types.png")
            label_type_bar(types, dest)
            parts += [_h3("label types"), H.figure(href, "cases per label type (label_types.json)")]
            counts = Counter("_".join(map(str, t)) for t in types.values())
            parts.append(H.table(("label type", "classes", "cases"),
                                 [(k, describe_type(str_to_type(k)), v) for k, v in counts.most_common()]))
        else:
            parts.append(_missing(lt))
        rep = ds / "import_report.json"
        if rep.exists():
            bad = read_json(rep).get("bad") or []
            parts.append(_h3(f"import errors ({len(bad)})"))
            if bad:
                parts.append(H.table(("case", "reason"), [(b.get("case_id"), b.get("reason")) for b in bad]))
            parts.append(_download(ctx, 1, rep, "import_report.json (every case)"))
    confs = (r.get("plans") or {}).get("configurations") or {}
    if confs:
        parts += [_h3("nnU-Net plans"),
                  H.table(("configuration", "spacing (z, y, x) mm", "patch (z, y, x)", "batch"),
                          [(c, v.get("spacing"), v.get("patch_size"), v.get("batch_size"))
                           for c, v in confs.items()])]
    parts += [_h3("fine model"), _training(r.get("training") or {})]
    return "".join(parts)


# --------------------------------------------------------------------------- stage 2

def selection_warning(quality: dict) -> str | None:
    """The red note of stage 2 when, on the cases with known truth, the pseudo labels the
    uncertainty selection kept score a lower mean organ Dice than those it rejected (the ranking
    then works against its purpose); None otherwise or without both numbers."""
    sel, rej = quality.get("mean_organ_dice_selected"), quality.get("mean_organ_dice_rejected")
    if not isinstance(sel, (int, float)) or not isinstance(rej, (int, float)) or sel >= rej:
        return None
    return (f"pseudo-label selection does worse than rejection: the selected cases' mean organ Dice "
            f"{sel:.3f} is below the rejected cases' {rej:.3f} (on {quality.get('cases')} cases with "
            f"known truth); the uncertainty ranking is not picking the better pseudo labels")


def stage2(ctx: ReportContext, man: dict) -> str:
    r = man.get("result") or {}
    rep = ctx.stage(2) / "report"
    parts = [H.kv_table({"unlabeled scans": r.get("unlabeled"), "scored": r.get("scored"),
                         "failed": r.get("failed"), "selected (K1)": r.get("selected"),
                         "tumor kept (K2)": r.get("tumor_kept"),
                         "tumor-only cases filled with organs": r.get("filled")})]
    hist = rep / "uncertainty_hist.png"
    parts.append(_h3("uncertainty"))
    parts.append(H.figure(ctx.asset(hist, 2), "organ / tumor uncertainty with the K1 / K2 cut lines")
                 if hist.exists() else _missing(hist))
    sel = rep / "selection.csv"
    if sel.exists():
        rows = read_csv(sel)
        parts.append(_h3(f"selection ({sum(x.get('selected') == '1' for x in rows)} of {len(rows)} selected)"))
        cols = ("case_id", "organ_rank", "organ_score", "selected", "tumor_rank", "tumor_score", "keep_tumor")
        shown = rows if len(rows) <= 2 * HEAD_ROWS else rows[:HEAD_ROWS] + rows[-HEAD_ROWS:]
        parts.append(H.table(cols, [[_cell(c, x.get(c)) for c in cols] for x in shown],
                             "" if shown is rows else f"first and last {HEAD_ROWS} by organ rank"))
        parts.append(_download(ctx, 2, sel, "selection.csv (all cases)"))
    else:
        parts.append(_missing(sel))
    q = rep / "pseudo_label_quality.json"
    if q.exists():
        qual = read_json(q)
        parts += [_h3("pseudo-label quality against hidden ground truth"),
                  H.kv_table({k.replace("_", " "): v for k, v in qual.items() if k != "per_case"})]
        warning = selection_warning(qual)
        if warning:
            parts.append(H.para(warning, "error"))
    overlays = sorted((rep / "overlays").glob("*.png")) if (rep / "overlays").is_dir() else []
    if overlays:
        parts.append(_h3("most / least organ-confident pseudo labels"))
        parts += [H.figure(ctx.asset(p, 2, "overlay_" + p.name), p.stem, width=300) for p in overlays]
    return "".join(parts)


# --------------------------------------------------------------------------- stage 3

def stage3(ctx: ReportContext, man: dict) -> str:
    r = man.get("result") or {}
    parts = [H.kv_table({"source cases (with tumor)": r.get("source_cases"), "objects": r.get("objects"),
                         "rejected components": r.get("rejected"), "errors": r.get("errors")})]
    idx_p = ctx.path(r.get("pool_dir")) or ctx.stage(3) / "pool"
    idx_p = idx_p / "index.json"
    if idx_p.exists():
        idx = read_json(idx_p)
        objs = idx.get("objects") or []
        if objs:
            vox = [o.get("voxels", 0) for o in objs]
            vol = [o.get("volume_mm3", 0.0) for o in objs]
            parts.append(H.kv_table({"pool spacing (z, y, x) mm": idx.get("spacing_zyx"),
                                     "tumor voxels per object (min / median / max)":
                                         f"{min(vox)} / {statistics.median(vox):g} / {max(vox)}",
                                     "tumor volume mm³ (median)": statistics.median(vol)}))
            touched = Counter(CLASS_NAMES.get(c, c) for o in objs for c in o.get("organs_touched", []))
            parts.append(H.table(("organ touched", "objects"), touched.most_common()))
        reasons = Counter(x.get("reason") for x in idx.get("rejected") or [])
        if reasons:
            parts.append(H.table(("rejection reason", "components"), reasons.most_common()))
        parts.append(_download(ctx, 3, idx_p, "pool index.json"))
    else:
        parts.append(_missing(idx_p))
    gal = ctx.stage(3) / "qc" / "cto_gallery.png"
    parts += [_h3("CTO gallery"),
              H.figure(ctx.asset(gal, 3), "central tumor slice of pooled objects (red: tumor outline)")
              if gal.exists() else _missing(gal)]
    return "".join(parts)


# --------------------------------------------------------------------------- stage 4

def stage4(ctx: ReportContext, man: dict) -> str:
    r = man.get("result") or {}
    parts = [_h3("coarse training set"),
             H.table(("source", "cases"), list((r.get("cases") or {}).items())),
             _h3(f"removals ({r.get('removed_components', 0)} components)")]
    by_reason = r.get("removed_by_reason") or {}
    parts.append(H.table(("reason", "components"), list(by_reason.items())) if by_reason
                 else H.para("nothing removed", "note"))
    rep = ctx.stage(4) / "cleaning_report.csv"
    if rep.exists():
        rows = read_csv(rep)
        agg: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
        for x in rows:
            a = agg[(x.get("reason", ""), x.get("class_name", ""))]
            a[0] += 1
            a[1] += _num(x.get("voxels")) or 0.0
        if agg:
            parts.append(H.table(("reason", "class", "components", "voxels"),
                                 [(k[0], k[1], int(v[0]), int(v[1])) for k, v in sorted(agg.items())],
                                 "removals by reason and class"))
        parts.append(_download(ctx, 4, rep, "cleaning_report.csv (every removal)"))
    summ = ctx.stage(4) / "cleaning_summary.csv"
    if summ.exists():
        rows = read_csv(summ)
        status = Counter(x.get("status") for x in rows)
        parts.append(H.table(("case status", "cases"), status.most_common()))
        worst = sorted((x for x in rows if (_num(x.get("voxels_removed")) or 0) > 0),
                       key=lambda x: -(_num(x.get("voxels_removed")) or 0))[:HEAD_ROWS]
        if worst:
            parts.append(H.table(("case", "components removed", "voxels removed"),
                                 [(x["case"], _num(x.get("components_removed")), _num(x.get("voxels_removed")))
                                  for x in worst], "cases with the most removed voxels"))
        errs = [(x["case"], x.get("error")) for x in rows if x.get("error")]
        if errs:
            parts.append(H.table(("case", "error"), errs, "cases that could not be cleaned (left out)"))
        parts.append(_download(ctx, 4, summ, "cleaning_summary.csv (one row per case)"))
    return "".join(parts)


# --------------------------------------------------------------------------- stage 5

def stage5(ctx: ReportContext, man: dict) -> str:
    r = man.get("result") or {}
    parts = []
    ds = ctx.path(r.get("dataset"))
    if ds is not None and (ds / "label_types.json").exists():
        types = read_json(ds / "label_types.json")
        dest, href = ctx.new_asset(5, "label_types.png")
        label_type_bar(types, dest)
        parts += [_h3(f"coarse training set ({len(types)} cases)"),
                  H.figure(href, "cases per label type after pseudo labels, fill-in and cleaning")]
    parts += [_h3("coarse model"), _training(r.get("training") or {})]
    counts = r.get("cutmix")
    parts.append(_h3("context-aware CutMix"))
    if counts:
        parts.append(H.kv_table({"samples": counts.get("samples"),
                                 "eligible (label type without tumor)": counts.get("eligible"),
                                 "pasted": counts.get("pasted"), "paste rate": counts.get("paste_rate"),
                                 "pasted tumor in the final patch": counts.get("reached_patch"),
                                 "no fitting location": counts.get("no_fit")}))
        warning = paste_rate_warning(counts)
        if warning:
            parts.append(H.para(warning, "error"))
    else:
        parts.append(H.para("no CutMix counts (stage-5 ran without a CTO pool, or before they were recorded)",
                            "note"))
    cut = ctx.path(r.get("cutmix_gallery") or r.get("cutmix_samples")) or ctx.stage(5) / "qc" / "cutmix_samples.png"
    parts.append(_h3("CutMix samples"))
    parts.append(H.figure(ctx.asset(cut, 5, "cutmix_samples.png"), "training patches after context-aware CutMix")
                 if cut.exists() else H.para("no CutMix sample picture (stage-5 qc/cutmix_samples.png)", "note"))
    return "".join(parts)


# --------------------------------------------------------------------------- stage 6

def _evaluation_table(summary: dict) -> str:
    rows = [(c, v.get("name"), v.get("dsc"), v.get("nsd"))
            for c, v in sorted((summary.get("per_class") or {}).items(), key=lambda kv: int(kv[0]))]
    for key, name in (("organ_mean", "organ mean (1-13)"), ("tumor", "tumor (14)"), ("overall", "overall")):
        v = summary.get(key) or {}
        rows.append(("", name, v.get("dsc"), v.get("nsd")))
    return H.table(("class", "name", "DSC", "NSD"), rows,
                   f"mean over {summary.get('n_cases')} validation cases (FLARE23 rules)")


def stage6(ctx: ReportContext, man: dict) -> str:
    r = man.get("result") or {}
    sd = ctx.stage(6)
    ev_p = sd / "evaluation" / "summary.json"
    summary = read_json(ev_p) if ev_p.exists() else (r.get("evaluation") or {})
    parts = [_h3("evaluation"), _evaluation_table(summary)]
    problems = {k: summary.get(k) for k in ("missing", "extra", "errors") if summary.get(k)}
    if problems:
        parts.append(H.kv_table(problems))
    per_case = sd / "evaluation" / "per_case.csv"
    parts.append(_download(ctx, 6, per_case, "per_case.csv (DSC/NSD per case and class)"))
    tot, skipped = r.get("windows_total"), r.get("windows_skipped")
    if tot:
        parts.append(H.kv_table({"sliding windows": tot, "windows skipped": skipped,
                                 "skipped fraction": (skipped or 0) / tot}))
    if per_case.exists():
        parts.append(_h3("validation overlays: worst and best cases"))
        parts += validation_overlays(ctx, read_csv(per_case))
    parts.append(_h3("efficiency (one `flareseg predict` process per case)"))
    eff_json = sd / "efficiency" / "efficiency.json"
    eff = (read_json(eff_json).get("summary") if eff_json.exists() else None) or r.get("efficiency") or {}
    if eff:
        parts.append(H.kv_table({k: v for k, v in eff.items() if k not in ("command",)}))
    eff_csv = sd / "efficiency" / "efficiency.csv"
    if eff_csv.exists():
        cols = ("case", "returncode", "wall_s", "rss_peak_mb", "gpu_max_mb", "gpu_auc_mb_s")
        rows = read_csv(eff_csv)
        parts.append(H.table(("case", "exit", "wall s", "peak RSS MB", "peak GPU MB", "GPU MB·s"),
                             [[x.get("case")] + [_num(x.get(c)) for c in cols[1:]] for x in rows[:2 * HEAD_ROWS]]))
        parts.append(_download(ctx, 6, eff_csv, "efficiency.csv"))
    rep = sd / "ship_report.json"
    parts.append(_download(ctx, 6, rep, "ship_report.json"))
    return "".join(parts)


SECTIONS: dict[int, Callable[[ReportContext, dict], str]] = {
    1: stage1, 2: stage2, 3: stage3, 4: stage4, 5: stage5, 6: stage6}
