"""stage-6 records each validation case's prediction time once: the predictor's per-step timings
carry a running ``total`` next to the steps, and the case time is that total, not the sum of all
entries (which counted every case twice)."""
import time

import pytest
import torch

from flareseg.inference.predictor import _Timer
from flareseg.pipeline.stage6_ship import case_seconds


def test_case_seconds_is_the_total_not_twice_it():
    t = _Timer(torch.device("cpu"))
    for step in ("load", "windows", "export"):
        time.sleep(0.02)
        t.lap(step)
    steps = {k: v for k, v in t.seconds.items() if k != "total"}
    assert set(steps) == {"load", "windows", "export"}
    got = case_seconds(t.seconds)
    assert got == pytest.approx(t.seconds["total"])
    assert got == pytest.approx(sum(steps.values()), abs=2e-3)
    assert got < 1.5 * sum(steps.values())   # the doubled figure was ~2x


def test_case_seconds_without_total_sums_the_steps():
    assert case_seconds({"a": 0.25, "b": 0.5}) == pytest.approx(0.75)
