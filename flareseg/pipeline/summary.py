"""The closing table of a pipeline run: accuracy, speed and window skipping from stage-6."""
from __future__ import annotations

from pathlib import Path

from flareseg.io import read_json
from flareseg.pipeline.stage import stage_dir


def _fmt(v) -> str:
    return "   -  " if v is None else f"{v:6.3f}"


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
    qc = Path(work) / "qc" / "index.html"
    if qc.exists():
        lines.append(f"  QC report                  {qc}")
    return "\n".join(lines)
