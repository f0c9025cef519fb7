"""Efficiency means exclude failed and timed-out cases (issue 26, item 7): a fast crash must not
lower the seconds per case; failures are counted and listed apart.  Rows are fakes."""
from __future__ import annotations

import pytest

from flareseg.evaluation.efficiency import summarize


def _row(case, rc, wall, timed_out=False, gpu=None):
    return {"case": case, "returncode": rc, "timed_out": timed_out, "wall_s": wall, "rss_peak_mb": wall * 100,
            "gpu_backend": "nvml" if gpu else None, "gpu_max_mb": gpu, "gpu_auc_mb_s": gpu and gpu * wall}


def test_means_are_over_finished_cases_failures_apart():
    rows = [_row("a", 0, 10.0, gpu=2000.0), _row("b", 0, 14.0, gpu=3000.0),
            _row("crash", 1, 0.5, gpu=100.0), _row("slow", -9, 60.0, timed_out=True, gpu=5000.0),
            _row("killed_ok_code", 0, 60.0, timed_out=True)]
    s = summarize(rows)
    assert (s["n_cases"], s["n_ok"], s["n_failed"], s["n_timed_out"]) == (5, 2, 3, 2)
    assert s["wall_s_mean"] == pytest.approx(12.0) and s["wall_s_max"] == 14.0
    assert s["rss_peak_mb_max"] == 1400.0 and s["gpu_max_mb"] == 3000.0
    assert s["gpu_auc_mb_s_mean"] == pytest.approx((20000 + 42000) / 2)
    assert [f["case"] for f in s["failed_cases"]] == ["crash", "slow", "killed_ok_code"]
    assert s["failed_cases"][1] == {"case": "slow", "returncode": -9, "timed_out": True, "wall_s": 60.0}
    assert s["failed_wall_s_mean"] == pytest.approx((0.5 + 60 + 60) / 3, abs=1e-3)
    assert s["wall_s_total"] == pytest.approx(144.5)       # every case's time


def test_all_failed_gives_no_means():
    s = summarize([_row("x", 2, 0.1)])
    assert s["wall_s_mean"] is None and s["n_ok"] == 0 and s["n_failed"] == 1
    assert s["failed_wall_s_mean"] == pytest.approx(0.1)
