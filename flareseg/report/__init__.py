"""Quality-control report: one static HTML page (PNG pictures, tables) over a pipeline work folder.

``build_qc_report(work_dir)`` writes ``work_dir/qc/index.html``; ``flareseg report --work W`` is
the command line.  Stages that have not run are shown as "not run".
"""
from flareseg.report.qc import build_qc_report

__all__ = ["build_qc_report"]
