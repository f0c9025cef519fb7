"""Issue 26: the run report of a cold `flareseg predict` says where its time went."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flareseg.inference.cold_start import cold_breakdown, process_age_seconds

REPO = Path(__file__).resolve().parents[1]


def test_process_age_grows_with_the_process():
    a = process_age_seconds()
    if a is None:
        pytest.skip("no /proc here")
    time.sleep(0.05)
    b = process_age_seconds()
    assert 0 < a < b


def test_breakdown_splits_the_run_and_keeps_the_rest_apart():
    steps = {"read": 0.5, "resample": 0.25, "windows": 2.0, "export": 0.25, "total": 3.0}
    out = cold_breakdown(3.0, 4.0, 1.5, steps, 9.0)
    assert out == {"start_and_imports": 3.0, "setup": 1.0, "model_load": 1.5, "case_read": 0.5,
                   "case_resample": 0.25, "case_windows": 2.0, "case_export": 0.25, "total": 9.0, "other": 0.5}
    unknown = cold_breakdown(None, None, 1.5, None, None)
    assert unknown["start_and_imports"] is None and unknown["total"] is None and "other" not in unknown


def test_cold_predict_reports_its_breakdown(tmp_path):
    from tiny_model import tiny_plans, write_model_folder
    from bad_input import tiny_ct
    model = write_model_folder(tmp_path / "model", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)
    tiny_ct(tmp_path / "ct.nii.gz")
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "flareseg.cli", "predict", "-i", str(tmp_path / "ct.nii.gz"),
                        "-o", str(tmp_path / "out"), "-m", str(model), "--device", "cpu", "-q"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    cold = json.loads((tmp_path / "out" / "predict_report.json").read_text())["cold_run_seconds"]
    assert cold["start_and_imports"] > 0 and cold["setup"] > 0 and cold["model_load"] > 0
    assert cold["case_sliding_window"] > 0 and cold["case_read"] > 0
    parts = [v for k, v in cold.items() if k not in ("total",)]
    assert sum(parts) == pytest.approx(cold["total"], abs=0.05)   # the parts add up to the whole run
    # what one case does not need is not imported: torch._dynamo (~1 s) came with initialising a
    # network's weights on the meta device for the model-folder check, weights replaced anyway;
    # nnU-Net's plans/label modules (~0.5 s: image readers, blosc2, numexpr) with reading the plans
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "flareseg.nnunet.model" in imported
    assert not imported & {"torch._dynamo", "nnunetv2.utilities.plans_handling.plans_handler", "blosc2"}
