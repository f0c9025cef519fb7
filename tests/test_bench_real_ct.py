"""bench.real_ct_dsc's scoring and bench.skipping_evidence's table: what the evidence numbers rest on."""
from __future__ import annotations

import numpy as np

from bench.real_ct_dsc import class_dsc, summary, table
from bench.skipping_evidence import render


def test_real_ct_scores_per_class_and_goal():
    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2, :2] = 1          # liver 4 voxels
    ref[1, :2, :2] = 3          # spleen 4 voxels
    ref[1, 2:, 2:] = 2          # right kidney 4 voxels
    ref[0, 2:, 2:] = 13         # left kidney 4
    pred = ref.copy()
    pred[1, 2:, 2:] = 0         # right kidney missed
    pred[0, 0, 3] = 4           # a pancreas voxel the reference lacks
    s = class_dsc(pred, ref)
    assert s[1]["dsc"] == 1.0 and s[2]["dsc"] == 0.0 and s[2]["pred_voxels"] == 0
    assert s[4] == {"ref_voxels": 0, "pred_voxels": 1, "dsc": 0.0} and s[5]["dsc"] is None
    m = summary(s)
    assert m["goal_min"] == 0.0 and m["goal_met"] is False
    assert m["mean_present"] == np.mean([1.0, 0.0, 1.0, 1.0])          # classes in the reference
    pred[1, 2:, 2:] = 2
    assert summary(class_dsc(pred, ref))["goal_met"] is True
    rows = table(s)
    assert rows[2].startswith("| 1 liver | 4 | 4 | 1.000") and "| 5 aorta | 0 | 0 | – |" in rows


def test_skipping_table_totals_and_time_saved():
    case = {"shape": [100, 10, 10], "spacing": [2.0, 2.0, 5.0], "seconds": {"skip": 6.0, "noskip": 10.0},
            "windows": {"windows_total": 50, "windows_skipped": 20, "planes_total": 10, "planes_skipped": 4,
                        "planes_grown": 1},
            "dice_skip_vs_noskip": {1: 1.0, 3: 0.99}, "voxels_changed": 7,
            "noskip_vs_truth": {1: 0.9}, "skip_vs_truth": {1: 0.9}}
    text = "\n".join(render({"150 mm, 1 voxel": {"A": case, "B": case}}))
    assert "| 150 mm, 1 voxel | A | 500 mm | 20 / 50 (40 %) | 4 / 10 (grown 1) | 10.00 | 6.00 | 40 % | 7 |" in text
    assert "**40 / 100 (40 %)** | | 20.00 | 12.00 | **40 %**" in text
    assert "| 150 mm, 1 voxel | 3 spleen | 0.9900 (n=2) | – | – |" in text
