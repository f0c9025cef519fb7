"""Stage-2 report files: uncertainty.csv with every score, ranked table, PNGs."""
from __future__ import annotations

import csv
import math

import numpy as np

from flareseg.config import PseudoLabelConfig
from flareseg.pseudolabel.report import central_slice, write_report
from flareseg.pseudolabel.selection import select


def test_report_files(tmp_path):
    scores = {f"c{i}": {"n_members": 2.0, "organ_entropy": 0.1 * i, "tumor_entropy": 0.05 * (5 - i),
                        "organ_disagreement": 0.01 * i, "tumor_disagreement": math.nan}
              for i in range(5)}
    sel = select(scores, PseudoLabelConfig(k_organ=3, k_tumor=1))

    def load(case):
        img = np.full((6, 8, 8), -500.0)
        lab = np.zeros((6, 8, 8), np.uint8)
        lab[2:4, 2:5, 2:5] = 1
        return img, lab

    paths = write_report(tmp_path, scores, sel, "entropy", load, n_examples=2)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in paths)
    assert names == ["overlays/least_0004_c3.png", "overlays/least_0005_c4.png",
                     "overlays/most_0001_c0.png", "overlays/most_0002_c1.png",
                     "selection.csv", "uncertainty.csv", "uncertainty_hist.png"]
    rows = list(csv.DictReader((tmp_path / "uncertainty.csv").open()))
    assert [r["case_id"] for r in rows] == [f"c{i}" for i in range(5)]
    assert rows[1]["organ_disagreement"] == "0.01" and rows[1]["tumor_disagreement"] == ""
    ranked = list(csv.DictReader((tmp_path / "selection.csv").open()))
    assert [r["selected"] for r in ranked] == ["1", "1", "1", "0", "0"]
    assert ranked[2]["keep_tumor"] == "1" and ranked[2]["label_type"].endswith("_13_14")
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_central_slice():
    lab = np.zeros((10, 2, 2), np.uint8)
    lab[6:9] = 3
    assert central_slice(lab) == 7
    assert central_slice(np.zeros((10, 2, 2), np.uint8)) == 5
