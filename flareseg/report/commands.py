"""`flareseg report`: the static QC page of a pipeline work folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flareseg.io import InputError

HELP = """\
Write the QC report of a pipeline work folder: one static HTML page with PNG pictures and tables
per stage (label-type counts, import errors, fine-model validation pseudo-Dice, uncertainty
histogram with the K1/K2 cut lines and the selection, pseudo-label quality, CTO gallery and pool
counts, cleaning removals by reason, CutMix samples, validation overlays of the worst and best
case, DSC/NSD table, efficiency table).  Works on a partial run: stages without a manifest are
shown as "not run".  No server and no scripts: open index.html in a browser, or copy the folder.

inputs : --work W, a folder written by `python -m flareseg.pipeline` (W/stage-N-<name>/manifest.json)
outputs: OUT/index.html and, next to it, OUT/stage-N/*.png|csv|json (OUT defaults to W/qc)
exit   : 0 on success, 2 when W is not a folder or OUT is a file / cannot be written

examples:
  flareseg report --work work-demo
  flareseg report --work /scratch/flare23 --out /scratch/flare23-qc
"""


def run_report(args: argparse.Namespace) -> int:
    from flareseg.report.qc import build_qc_report
    from flareseg.write_guard import UnsafeOutput
    try:
        if args.out is not None and args.out.exists() and not args.out.is_dir():
            raise InputError(args.out, "--out exists and is not a folder")
        dest = build_qc_report(args.work, args.out)
    except (InputError, UnsafeOutput) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # the output folder cannot be written (permissions, a file on the path)
        print(f"report: {InputError(e.filename or args.out, f'cannot write the report ({e.strerror})')}",
              file=sys.stderr)
        return 2
    print(f"QC report: {dest}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="static HTML QC report (pictures + tables) of a work folder",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--work", required=True, type=Path, help="pipeline work folder")
    p.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: WORK/qc)")
    p.set_defaults(func=run_report)
