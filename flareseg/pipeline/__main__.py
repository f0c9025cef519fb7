"""`python -m flareseg.pipeline STAGE|all --config C --work W`: run pipeline stages.

`all` runs each stage in its own process (nnU-Net state and memory do not leak between stages)
and stops at the first failure.
"""
from __future__ import annotations

import argparse
import os
import logging
import subprocess
import sys
from pathlib import Path

from flareseg.config import ConfigError, load_config
from flareseg.pipeline.registry import STAGES, run_stage
from flareseg.pipeline.stage import STAGE_NAMES, StageError, StagePaused

HELP = """\
Run flareseg pipeline stages on a work folder.

  1 fine          import + validate data (or generate phantoms), plan/preprocess fine and coarse
                  spacing with nnU-Net, train the fine model with the merge-max loss
  2 pseudolabels  pseudo-label unlabeled scans, rank by uncertainty, fill organs into tumor-only cases
  3 cto           context-aware tumor-object pool
  4 cleaning      clean training labels (small regions, tumors outside the abdomen / far from organs)
  5 coarse        train the coarse model with online context-aware CutMix
  6 ship          fast predictor on the validation set, evaluation and efficiency report

Each stage writes work/stage-N-<name>/manifest.json and is skipped when its config sections and
inputs are unchanged (--force reruns it). A killed stage resumes from its finished steps.
"""


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting collapse throughput when two torch processes share
    # the cores (epochs 10x slower); passive waiting costs nothing measurable on a quiet machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(prog="python -m flareseg.pipeline", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", help="stage number 1-6, or 'all'")
    p.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="YAML config")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: config's work_dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train_fine.epochs=2 (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun even if the stage is current")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    work = args.work or Path(cfg.work_dir)
    if args.stage == "all":
        for n in sorted(STAGES):
            cmd = [sys.executable, "-m", "flareseg.pipeline", str(n), "--config", str(args.config),
                   "--work", str(work)] + sum((["--set", o] for o in args.overrides), [])
            if args.force:
                cmd.append("--force")
            print(f"==> stage-{n} ({STAGE_NAMES[n]})", flush=True)
            rc = subprocess.call(cmd)
            if rc != 0:
                print(f"stage-{n} failed (exit {rc}); fix it and rerun: finished stages are skipped",
                      file=sys.stderr)
                return rc
        from flareseg.pipeline.summary import run_summary
        from flareseg.report.qc import build_qc_report
        build_qc_report(work)
        print(run_summary(work))
        return 0
    try:
        n = int(args.stage)
        if n not in STAGE_NAMES:
            raise ValueError
    except ValueError:
        print(f"unknown stage {args.stage!r}: use 1-6 or all", file=sys.stderr)
        return 2
    try:
        man = run_stage(n, cfg, work, force=args.force)
    except StagePaused as e:
        print(f"stage-{n}: {e}")
        return 0
    except StageError as e:
        print(f"stage-{n}: {e}", file=sys.stderr)
        return 3
    state = "skipped (current)" if man.get("skipped") else "done"
    print(f"stage-{n} ({STAGE_NAMES[n]}) {state}: {work / f'stage-{n}-{STAGE_NAMES[n]}' / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
