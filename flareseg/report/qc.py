"""Build the QC report: ``work/qc/index.html`` with per-stage pictures and tables.

Every picture and table file the page shows is copied (hard-linked when possible) or drawn into
the output folder, so the folder is self-contained: links are relative, no server, no scripts.
Paths recorded in manifests are re-based onto ``work_dir``
(:func:`flareseg.report.context.local_path`), so a moved or copied work folder still reports.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from flareseg import write_guard
from flareseg.io import InputError, read_json, write_text
from flareseg.write_guard import WritePlan, check_plan
from flareseg.work_layout import STAGE_NAMES, stage_dir
from flareseg.report import html as H
from flareseg.report.context import ReportContext
from flareseg.report.sections import SECTIONS, imported_types

log = logging.getLogger(__name__)


def _manifest(work: Path, n: int) -> dict | None:
    m = stage_dir(work, n) / "manifest.json"
    if not m.exists():
        return None
    try:
        return read_json(m)
    except (OSError, ValueError) as e:
        log.warning("QC report: %s unreadable: %s", m, e)
        return {"_error": f"{m}: unreadable manifest ({e})"}


def _status(ctx: ReportContext, n: int) -> tuple[str, str]:
    """(css class, text) of a stage's state."""
    man = ctx.manifests.get(n)
    if man is None:
        extra = " (its folder exists without a manifest: running or interrupted)" if ctx.stage(n).exists() else ""
        return "notrun", "not run" + extra
    if "_error" in man:
        return "error", man["_error"]
    t = man.get("timings", {}).get("total_seconds")
    return "done", f"done {man.get('finished', '')}" + (f", {t:.0f} s" if isinstance(t, (int, float)) else "")


def _overview(ctx: ReportContext) -> str:
    rows = []
    for n, name in STAGE_NAMES.items():
        man = ctx.manifests.get(n) or {}
        rows.append((f"stage-{n}", name, _status(ctx, n)[1], man.get("config_hash"),
                     (man.get("versions") or {}).get("flareseg")))
    return "<h2 id=\"overview\">Overview</h2>\n" + H.table(
        ("stage", "name", "status", "config hash", "flareseg"), rows)


def build_qc_report(work_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the QC page of a (possibly partial) work folder; returns the path of ``index.html``.

    ``out`` defaults to ``work_dir/qc``.  Stages without a manifest are shown as "not run"; a
    section that cannot be drawn (unreadable file...) shows the error and the rest still builds.
    """
    work = Path(work_dir)
    if not work.is_dir():
        raise InputError(work, "is not a work folder (does not exist or is not a directory)")
    out_dir = Path(out) if out is not None else work / "qc"
    if out_dir.is_dir():
        _adopt_earlier_report(out_dir)
    # the write guard: index.html against a file report did not write; the figures' names are
    # known only as sections draw them, so the recording's write-time check guards those
    check_plan(WritePlan("report", out_dir, [out_dir / "index.html"], input_folders=[work], out_inside_input=True,
                         flag="--out"))
    with write_guard.recording(out_dir, "report"):
        return _build(work, out_dir)


def _adopt_earlier_report(out_dir: Path) -> None:
    """Record as report's own an index.html an earlier flareseg wrote before ledgers existed (its
    title says so) and the figures it links to."""
    index = out_dir / "index.html"
    if (out_dir / write_guard.LEDGER).exists() or not index.is_file():
        return
    try:
        text = index.read_text()
    except (OSError, UnicodeDecodeError):
        return
    if "<h1>flareseg QC report</h1>" in text:
        figures = [out_dir / s for s in re.findall(r'src="([^":]+)"', text) if ".." not in s]
        write_guard.adopt([index, *figures], "report")


def _build(work: Path, out_dir: Path) -> Path:
    ctx = ReportContext(work, out_dir, {n: _manifest(work, n) for n in STAGE_NAMES})
    parts = ["<h1>flareseg QC report</h1>\n",
             H.para(f"work folder: {work.resolve()} — generated {time.strftime('%Y-%m-%d %H:%M:%S')}", "note"),
             "<p>" + " · ".join(H.link(f"#stage-{n}", f"stage-{n} {name}") for n, name in STAGE_NAMES.items())
             + "</p>\n",
             _overview(ctx)]
    for n, name in STAGE_NAMES.items():
        cls, text = _status(ctx, n)
        parts.append(f'<section id="stage-{n}">\n<h2>stage-{n}: {H.esc(name)}</h2>\n'
                     f'<p class="status {cls}">{H.esc(text)}</p>\n')
        if cls == "done":
            parts.append(_section(ctx, n, SECTIONS[n]))
        elif n == 1:   # imported but not trained yet: the label types are known already
            parts.append(_section(ctx, n, lambda c, _m: imported_types(c)))
        parts.append("</section>\n")
    dest = out_dir / "index.html"
    write_text(H.page("flareseg QC report", "".join(parts)), dest)
    log.info("QC report written to %s", dest)
    return dest


def _section(ctx: ReportContext, n: int, builder: Any) -> str:
    try:
        return builder(ctx, ctx.manifests[n])
    except Exception as e:  # one broken file must not hide the other stages
        log.warning("QC report: stage-%d section failed: %s", n, e, exc_info=True)
        return H.para(f"could not draw this section: {type(e).__name__}: {e}", "error")
