"""Training iterations/s of stage-1 with 1 process vs N torchrun processes (same global batch).

    python -m bench.ddp_speed --config configs/tiny.yaml --work /tmp/ddp-bench \
        --nproc 2 --epochs 4 --iters 10 [--set key=value ...]

Runs stage-1 once as one process, then trains the same planned data set again under
``torchrun --standalone --nproc-per-node N`` (the data/planning steps are reused); iterations/s
is iterations_per_epoch / median epoch time (nnU-Net's epoch timestamps, validation included)
over the epochs after the first.  Prints one markdown table row per run.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from bench._common import run_bench


def epoch_seconds(work: Path) -> list[float]:
    ck = next((work / "stage-1-fine" / "nnUNet_results").rglob("checkpoint_final.pth"))
    log = torch.load(ck, map_location="cpu", weights_only=False)["logging"]
    return [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]


def run(cmd: list[str]) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    sets = a.sets + [f"train_fine.epochs={a.epochs}", f"train_fine.iterations_per_epoch={a.iters}"]
    base = [sys.executable, "-m", "flareseg.pipeline", "1", "--config", a.config, "--work", str(a.work)]
    rows = []
    for n in (1, a.nproc):
        s2 = a.work / "stage-1-fine"
        if n > 1:   # train again on the same planned data
            shutil.rmtree(s2 / "nnUNet_results", ignore_errors=True)
            for f in (s2 / ".steps" / "train.json", s2 / "manifest.json"):
                f.unlink(missing_ok=True)
        flags = sum((["--set", s] for s in sets + [f"train_fine.gpus={n}"]), [])
        if n == 1:
            run([*base, *flags])
        else:
            run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                 *base[1:], *flags])
        t = statistics.median(epoch_seconds(a.work)[1:])
        rows.append((n, a.iters / t))
    for n, ips in rows:
        print(f"| {n} | {ips:.2f} | {ips / rows[0][1]:.2f} |")


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "ddp_speed"))
