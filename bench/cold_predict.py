"""Cold `flareseg predict`, FLARE's way: one fresh process per case, its run report's breakdown.

Runs ``flareseg predict -i CASE -o <tmp> -m MODEL -q [--config FILE]`` ``--runs`` times in fresh
processes and prints the medians of the report's ``cold_run_seconds`` (start + imports, setup,
model load, the case's steps, other, total = the process's age when the report was written) and
of the wall time around the process (so also the interpreter's exit).  ``--tree DIR`` (repeatable)
runs flareseg from another source tree (``PYTHONPATH=DIR``, e.g. a ``git archive`` of an older
commit) with the same interpreter; several trees run alternately (ABBA order), paired, so a load
that drifts hits them alike.

    python -m bench.cold_predict -i CASE.nii.gz -m MODEL --config inference.yaml --runs 6 \
        --tree /tmp/before --tree /tmp/after
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import machine_line, run_bench

REPO = Path(__file__).resolve().parents[1]
MAIN = "import sys; from flareseg.cli import main; sys.argv[0] = 'flareseg'; sys.exit(main())"


def cold_run(tree: Path, case: Path, model: Path, config: Path | None, out: Path) -> dict:
    """One fresh predict process from ``tree`` (absolute paths): its ``cold_run_seconds`` plus ``wall``."""
    cmd = [sys.executable, "-c", MAIN, "predict", "-i", str(case), "-o", str(out), "-m", str(model), "-q",
           *(["--config", str(config)] if config else [])]
    t0 = time.perf_counter()
    # run in the tree: ``python -c`` puts the working folder first on sys.path, before PYTHONPATH
    r = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{tree}: predict failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    cold = json.loads((out / "predict_report.json").read_text())["cold_run_seconds"]
    return {**cold, "wall": round(wall, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-i", "--input", type=Path, required=True, help="one CT file")
    ap.add_argument("-m", "--model", type=Path, required=True, help="model folder")
    ap.add_argument("--config", type=Path, default=None, help="predict's --config (e.g. stage-6's inference.yaml)")
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per tree (default 5)")
    ap.add_argument("--tree", type=Path, action="append", default=None,
                    help="source tree to run flareseg from (repeatable; default this repository)")
    args = ap.parse_args(argv)
    args.input, args.model = args.input.resolve(), args.model.resolve()
    args.config = args.config.resolve() if args.config else None
    trees = [t.resolve() for t in args.tree or [REPO]]
    print(machine_line(), "(before the runs)")
    rows: dict[Path, list[dict]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory(prefix="cold_predict.") as tmp:
        for i in range(args.runs):
            for t in trees if i % 2 == 0 else trees[::-1]:
                rows[t].append(cold_run(t, args.input, args.model, args.config, Path(tmp) / f"{len(rows[t])}_{t.name}"))
    print(machine_line(), "(after the runs)")
    keys = [k for k in rows[trees[0]][0] if all(r.get(k) is not None for rs in rows.values() for r in rs)]
    print(f"| tree (median of {args.runs}) | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for t, rs in rows.items():
        print(f"| {t} | " + " | ".join(f"{statistics.median(r[k] for r in rs):.3f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "cold_predict"))
