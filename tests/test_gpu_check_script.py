"""``DEVICE=cpu bash bench/gpu_check.sh`` completes on a CPU (issue 26): the CPU steps run (tiny
training, efficiency), the CUDA steps say "skipped: no CUDA", one summary table.  Minutes: slow."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = os.environ | {"DEVICE": "cpu", "OUT": str(tmp_path / "out"), "EPOCHS": "1"}
    p = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): line for line in
            (tmp_path / "out" / "summary.md").read_text().splitlines() if line.startswith("| (")}
    assert [k[:3] for k in rows] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"]
    for k, line in rows.items():
        assert (" | skipped: no CUDA | " in line) == (k[:3] in ("(d)", "(e)", "(f)")), line
        if k[:3] in ("(a)", "(b)", "(c)"):
            assert " | ok | " in line, line
