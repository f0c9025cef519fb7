"""The closing table of a pipeline run: accuracy, speed and window skipping from stage-6."""
from __future__ import annotations

from pathlib import Path

from flareseg.io import read_json
from flareseg.work_layout import stage_dir


#: a class whose validation DSC stays below this is reported as not learned at the run's budget
NOT_LEARNED_DSC = 0.05


def _fmt(v) -> str:
    return "   -  " if v is None else f"{v:6.3f}"


def class_table(per_class: dict, not_learned_below: float = NOT_LEARNED_DSC) -> list[str]:
    """Lines of the per-class DSC / NSD table (``per_class``: summary.json's ``{"1": {"name",
    "dsc", "nsd"}, ...}``, in class order), marking every class whose DSC is below
    ``not_learned_below`` as not learned at this budget (a tiny CPU demo trains minutes: organs
    it has not learned yet read as 0 and are not a fault of the tool) and a class without a score
    as absent from the validation labels; a closing line counts them."""
    rows = sorted(per_class.items(), key=lambda kv: int(kv[0]))
    width = max([len(v.get("name", k)) for k, v in rows] + [5])
    lines = [f"  {'class':<{width}}    DSC    NSD"]
    weak = 0
    for k, v in rows:
        dsc, nsd = v.get("dsc"), v.get("nsd")
        note = ""
        if dsc is None:
            note = "  no score (absent from the validation labels)"
        elif dsc < not_learned_below:
            note, weak = "  not learned at this budget", weak + 1
        lines.append(f"  {v.get('name', k):<{width}} {_fmt(dsc)} {_fmt(nsd)}{note}".rstrip())
    if weak:
        lines.append(f"  {weak} of {len(rows)} classes below DSC {not_learned_below:g}: not learned at this "
                     "training budget (the CPU demo trains for minutes; a full run learns them)")
    return lines


def cutmix_line(work: Path) -> str:
    """The closing table's CutMix line from stage-5's manifest (empty without counts), flagged
    when the paste rate is below :data:`flareseg.cto.cutmix.MIN_PASTE_RATE`."""
    from flareseg.cto.cutmix import paste_rate_warning
    m = stage_dir(work, 5) / "manifest.json"
    c = (read_json(m).get("result") or {}).get("cutmix") if m.exists() else None
    if not c:
        return ""
    line = (f"  {'CutMix pasted':<27}{c.get('pasted')} of {c.get('eligible')} eligible samples "
            f"({c.get('reached_patch')} with tumor in the patch, {c.get('no_fit')} no fit)")
    return line + ("  WARNING: below 10 %" if paste_rate_warning(c) else "")


def external_lines(ext: dict | None) -> list[str]:
    """The closing table's lines for ``evaluation.external_image`` (stage-6's ``external``): DSC per
    class present in its labels or the prediction, or why it was skipped."""
    if not ext:
        return []
    name = Path(ext["image"]).name
    if ext.get("skipped"):
        return [f"external scan {name}: skipped ({ext['skipped']})"]
    rows = [(k, v) for k, v in sorted(ext["per_class"].items(), key=lambda kv: int(kv[0]))
            if v.get("dsc") is not None]
    width = max([len(v["name"]) for _, v in rows] + [5])
    lines = [f"per class (external scan {name}, labels {Path(ext['labels']).name})",
             f"  {'class':<{width}}    DSC  reference voxels"]
    for _, v in rows:
        note = "" if v["ref_voxels"] else "  (absent from its labels)"
        lines.append(f"  {v['name']:<{width}} {_fmt(v['dsc'])}  {v['ref_voxels']:>16}{note}")
    return lines


def run_summary(work: Path) -> str:
    """Text table of the validation results of a finished run (empty if stage-6 has not run)."""
    m = stage_dir(work, 6) / "manifest.json"
    if not m.exists():
        return ""
    r = read_json(m)["result"]
    ev = r["evaluation"]
    eff = r.get("efficiency", {})
    per_case = read_json(stage_dir(work, 6) / "ship_report.json")["prediction"]["cases"]
    secs = [c["seconds"] for c in per_case.values()]
    lines = [
        "flareseg validation summary",
        f"  cases                      {len(secs)}",
        f"  organ mean DSC / NSD       {_fmt(ev['organ_mean']['dsc'])} / {_fmt(ev['organ_mean']['nsd'])}",
        f"  tumor DSC / NSD            {_fmt(ev['tumor']['dsc'])} / {_fmt(ev['tumor']['nsd'])}",
        f"  predictor s/case (in-proc) {sum(secs) / max(1, len(secs)):6.2f}",
        f"  flareseg predict s/case    {_fmt(eff.get('wall_s_mean'))}  (own process: start-up + model load)",
        f"  peak RSS MB                {eff.get('rss_peak_mb_max')}",
        f"  GPU memory                 {eff.get('gpu_max_mb') or eff.get('gpu_memory')}"
        + (f" MB (net of baseline: {eff.get('gpu_max_net_mb')} MB)" if eff.get("gpu_max_mb") else ""),
        f"  windows skipped            {r['windows_skipped']} of {r['windows_total']}",
    ]
    cm = cutmix_line(work)
    if cm:
        lines.append(cm)
    if ev.get("per_class"):
        lines += ["per class (validation)", *class_table(ev["per_class"])]
    lines += external_lines(r.get("external"))
    qc = Path(work) / "qc" / "index.html"
    if qc.exists():
        lines.append(f"  QC report                  {qc}")
    return "\n".join(lines)


def _training_line(tr: dict | None) -> str | None:
    if not tr:
        return None
    dice = [v for v in (tr.get("val_pseudo_dice") or {}).values() if v is not None]
    mean = f", mean val pseudo-Dice {sum(dice) / len(dice):.3f} ({len(dice)} classes)" if dice else ""
    return (f"  trained to epoch {tr.get('epochs')}: train loss {tr.get('final_train_loss')}, "
            f"val loss {tr.get('final_val_loss')}{mean}")


def stage_summary(manifest: dict) -> list[str]:
    """A few lines on what a finished stage did (terminal, after the stage): time per step and
    its main counts, read from the stage's ``manifest.json``."""
    n, r = manifest.get("stage"), manifest.get("result") or {}
    t = manifest.get("timings") or {}
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in (t.get("steps") or {}).items() if v)
    lines = [f"stage-{n} ({manifest.get('name')}) finished in {t.get('total_seconds', 0):.0f} s"
             + (f" ({steps})" if steps else "")]
    if n == 1:
        imp = r.get("import") or {}
        lines.append(f"  imported {imp.get('ok')} cases ({imp.get('bad')} refused), label types from "
                     f"{imp.get('label_type_source')}")
    elif n == 2:
        lines.append(f"  {r.get('scored')} of {r.get('unlabeled')} unlabeled scans scored ({r.get('failed')} "
                     f"failed), {r.get('selected')} selected ({r.get('tumor_kept')} keep tumor), "
                     f"{r.get('filled')} tumor-only cases filled with organs")
    elif n == 3:
        lines.append(f"  {r.get('objects')} tumor objects from {r.get('source_cases')} cases "
                     f"({r.get('rejected')} rejected, {r.get('errors')} errors)")
    elif n == 4:
        lines.append(f"  {r.get('removed_components')} components removed {r.get('removed_by_reason') or ''}".rstrip())
    elif n == 5:
        c = r.get("cutmix") or {}
        if c:
            lines.append(f"  CutMix pasted into {c.get('pasted')} of {c.get('eligible')} eligible samples")
    elif n == 6:
        ev = r.get("evaluation") or {}
        om, tu = ev.get("organ_mean") or {}, ev.get("tumor") or {}
        if om:
            lines.append(f"  validation: organ mean DSC {_fmt(om.get('dsc')).strip()}, tumor DSC "
                         f"{_fmt(tu.get('dsc')).strip()}")
    line = _training_line(r.get("training"))
    if line:
        lines.append(line)
    return lines
