"""Efficiency harness: one process per case, wall time, peak RSS, GPU memory or its absence."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from flareseg.cli import main
from flareseg.evaluation.efficiency import GPU_UNAVAILABLE, fill_command, measure_efficiency, summarize
from flareseg.evaluation.gpu_memory import probe_backend

# copies {input} to {output}, holds 64 MB and sleeps 0.3 s
COPY_SLEEP = [sys.executable, "-c",
              "import shutil, sys, time; shutil.copy(sys.argv[1], sys.argv[2]); "
              "x = bytearray(64 * 2**20); time.sleep(0.3)", "{input}", "{output}"]


@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("case_a_0000.nii.gz", "case_b_0000.nii.gz"):
        (d / name).write_bytes(name.encode())
    return sorted(d.iterdir())


def test_fill_command_keeps_other_braces():
    cmd = fill_command(["python", "-c", "d = {}; print('{input}')", "{output}"], {"input": "a", "output": "b"})
    assert cmd == ["python", "-c", "d = {}; print('a')", "b"]


def test_measure_efficiency_times_each_case(inputs, tmp_path):
    rows = measure_efficiency(COPY_SLEEP, inputs[:1], tmp_path / "eff", interval=0.05)
    (row,) = rows
    assert row["case"] == "case_a" and row["returncode"] == 0
    assert row["wall_s"] >= 0.3
    # the child's own peak: its 64 MB buffer plus an interpreter, not the (larger) test process
    assert 64 <= row["rss_peak_mb"] < 64 + 60
    out = tmp_path / "eff" / "outputs" / "case_a.nii.gz"
    assert out.read_bytes() == inputs[0].read_bytes()
    if probe_backend() is None:
        assert row["gpu_max_mb"] is None and row["gpu_auc_mb_s"] is None
        assert summarize(rows)["gpu_memory"] == GPU_UNAVAILABLE
    else:  # pragma: no cover - only on GPU machines
        assert row["gpu_max_mb"] > 0 and row["gpu_samples"] >= 3


def test_cli_efficiency(inputs, tmp_path, capsys):
    out = tmp_path / "eff"
    rc = main(["efficiency", "--inputs", str(inputs[0].parent), "--out", str(out), "--", *COPY_SLEEP])
    assert rc == 0
    text = capsys.readouterr().out
    with open(out / "efficiency.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case_a", "case_b"]
    assert all(float(r["wall_s"]) >= 0.3 and float(r["rss_peak_mb"]) >= 64 for r in rows)
    summary = json.loads((out / "efficiency.json").read_text())["summary"]
    assert summary["n_cases"] == 2 and summary["n_failed"] == 0
    if probe_backend() is None:
        assert "GPU memory unavailable" in text and summary["gpu_max_mb"] is None


def test_failures_and_timeout_are_reported(inputs, tmp_path):
    fail = measure_efficiency([sys.executable, "-c", "import sys; sys.exit(3)", "{input}"], inputs[:1],
                              tmp_path / "fail")
    assert fail[0]["returncode"] == 3 and not fail[0]["timed_out"]
    slow = measure_efficiency([sys.executable, "-c", "import time; time.sleep(30)", "{input}"], inputs[:1],
                              tmp_path / "slow", timeout_s=0.5)
    assert slow[0]["timed_out"] and slow[0]["returncode"] != 0 and slow[0]["wall_s"] < 10
    missing = measure_efficiency(["/nonexistent/predict", "{input}"], inputs[:1], tmp_path / "nope")
    assert missing[0]["returncode"] == 127
    assert main(["efficiency", "--inputs", str(inputs[0]), "--out", str(tmp_path / "cli"), "--",
                 sys.executable, "-c", "import sys; sys.exit(1)", "{input}"]) == 1


# --------------------------------------------------------------------------- sampling cadence

class _FakeTime:
    """A clock that only moves when a query takes time (``query_s``) or the sampler waits."""

    def __init__(self, query_s: float, n: int):
        self.now, self.query_s, self.n, self.query_times = 0.0, query_s, n, []

    def clock(self) -> float:
        return self.now

    def wait(self, s: float) -> None:
        self.now += s

    def read(self) -> float:
        self.query_times.append(self.now)
        self.now += self.query_s
        return 1000.0 + len(self.query_times)

    def stopped(self) -> bool:
        return len(self.query_times) >= self.n


@pytest.mark.parametrize("cadence, period", [("official", 0.1 + 0.03), ("fixed", 0.1)])
def test_sampling_cadence_with_a_fake_clock(cadence, period):
    from flareseg.evaluation.gpu_memory import sample_until
    t = _FakeTime(query_s=0.03, n=6)
    samples: list[float] = []
    sample_until(t.read, 0.1, cadence, samples, t.stopped, t.clock, t.wait)
    assert samples == [1001.0, 1002.0, 1003.0, 1004.0, 1005.0, 1006.0]
    assert np.diff(t.query_times) == pytest.approx([period] * 5)


def test_fixed_cadence_catches_up_after_a_slow_query():
    from flareseg.evaluation.gpu_memory import sample_until
    t = _FakeTime(query_s=0.25, n=4)   # each query longer than the interval: no waiting at all
    sample_until(t.read, 0.1, "fixed", [], t.stopped, t.clock, t.wait)
    assert np.diff(t.query_times) == pytest.approx([0.25] * 3)
    with pytest.raises(ValueError, match="cadence"):
        sample_until(t.read, 0.1, "sometimes", [], t.stopped, t.clock, t.wait)


def test_cli_efficiency_sampling_option(inputs, tmp_path, capsys):
    out = tmp_path / "eff"
    quick = [sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])", "{input}", "{output}"]
    assert main(["efficiency", "--inputs", str(inputs[0]), "--out", str(out), "--sampling", "official",
                 "--", *quick]) == 0
    assert json.loads((out / "efficiency.json").read_text())["summary"]["sampling"] == "official"
    with pytest.raises(SystemExit):
        main(["efficiency", "--inputs", str(inputs[0]), "--out", str(out), "--sampling", "often", "--", *quick])
    assert "--sampling" in capsys.readouterr().err
