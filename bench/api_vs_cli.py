"""`flareseg.predict` (the Python API) against `flareseg predict` (the command) on the same case,
each in a fresh process, in turn (API, CLI, API, CLI, ...), one warm-up pair not counted; wall and
CPU seconds per process and the API/CLI ratio pair by pair (medians quoted).

The model is a small random one from ``tests/tiny_model.py`` (PlainConvUNet 8-16-32-64, patch
32x64x64 at 2.5x1.5x1.5 mm), the case an 80x192x192 CT (100 sliding windows); both sides write the
label map and the run report.  ``--torch-first`` runs the API as a script that imports torch before
flareseg, so ``OMP_WAIT_POLICY`` stays unset as it was for every API user before issue 27.

    python -m bench.api_vs_cli --work /tmp/apibench [--pairs 5] [--torch-first] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench._common import add_overwrite_arg, machine_line, refuse_input_outputs, run_bench, write_report

API = """import sys
if sys.argv[4] == "torch-first":
    import torch  # noqa: F401  (a script that loaded torch before flareseg)
import flareseg
flareseg.predict(sys.argv[1], sys.argv[2], sys.argv[3], device="cpu")
"""


def inputs(work: Path) -> tuple[Path, Path]:
    """The model folder and the case that both sides read (:func:`setup` writes them once)."""
    return work / "model", work / "case_0000.nii.gz"


def setup(work: Path) -> tuple[Path, Path]:
    """The model folder and the case (written once)."""
    import SimpleITK as sitk
    from tests.tiny_model import tiny_plans, write_model_folder
    model, case = inputs(work)
    if not (model / "plans.json").is_file():
        write_model_folder(model, plans=tiny_plans(patch_size=(32, 64, 64), spacing=(2.5, 1.5, 1.5),
                                                   features=(8, 16, 32, 64)), seed=1)
    if not case.is_file():
        shape = (80, 192, 192)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        arr = np.where(y ** 2 + x ** 2 < 0.7, 40, -1000) + np.random.default_rng(0).normal(0, 20, shape)
        img = sitk.GetImageFromArray(arr.astype(np.int16))
        img.SetSpacing((1.5, 1.5, 2.5))
        sitk.WriteImage(img, str(case))
    return model, case


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, user + system CPU) seconds of one process run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={k: v for k, v in os.environ.items()
                                                              if k != "OMP_WAIT_POLICY"})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the model, the case and the outputs")
    p.add_argument("--pairs", type=int, default=5, help="counted API/CLI pairs (one warm-up pair more)")
    p.add_argument("--torch-first", action="store_true", help="the API script imports torch before flareseg")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    add_overwrite_arg(p)
    a = p.parse_args(argv)
    model, case = inputs(a.work)
    refuse_input_outputs({"--out": a.out}, [case], model, overwrite=a.overwrite)
    a.work.mkdir(parents=True, exist_ok=True)
    setup(a.work)
    api = [sys.executable, "-c", API, str(case), str(model), str(a.work / "api"),
           "torch-first" if a.torch_first else "-"]
    cli = [sys.executable, "-m", "flareseg.cli", "predict", "-i", str(case), "-o", str(a.work / "cli"),
           "-m", str(model), "-q", "--device", "cpu"]
    rows = []
    for i in range(a.pairs + 1):
        pair = timed(api), timed(cli)
        if i:   # the first pair warms the file cache
            rows.append(pair)
    med = statistics.median
    walls = [r[0][0] / r[1][0] for r in rows]
    cpus = [r[0][1] / r[1][1] for r in rows]
    text = "\n".join([
        f"API ({'torch imported first, OMP_WAIT_POLICY unset' if a.torch_first else 'import flareseg first'}) "
        f"vs CLI, {len(rows)} pairs; {machine_line()}", "",
        "| | API median | CLI median | API/CLI median (min–max) |", "|---|---:|---:|---:|",
        f"| wall s | {med(r[0][0] for r in rows):.2f} | {med(r[1][0] for r in rows):.2f} | "
        f"{med(walls):.2f} ({min(walls):.2f}–{max(walls):.2f}) |",
        f"| CPU s | {med(r[0][1] for r in rows):.2f} | {med(r[1][1] for r in rows):.2f} | "
        f"{med(cpus):.2f} ({min(cpus):.2f}–{max(cpus):.2f}) |", ""])
    write_report(text, a.out, overwrite=a.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "api_vs_cli"))
