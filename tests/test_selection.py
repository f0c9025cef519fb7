"""Selection: K1/K2 counts and fractions, tie handling, NaN handling, label types, written labels."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from flareseg.config import PseudoLabelConfig
from flareseg.labels import ORGANS, TUMOR
from flareseg.pseudolabel.selection import final_label, resolve_k, select

ORG14 = ORGANS + (TUMOR,)


def table(rows: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    return {c: {"organ_entropy": o, "tumor_entropy": t} for c, (o, t) in rows.items()}


SCORES = table({
    "c": (0.10, 0.50),
    "a": (0.30, 0.20),
    "e": (0.20, 0.10),
    "b": (0.40, 0.05),   # best tumor, but organ rank 4 -> not selected with K1 = 3
    "d": (0.50, 0.01),
})


def by_id(sel):
    return {s.case_id: s for s in sel}


def test_counts_ranks_and_label_types():
    sel = select(SCORES, PseudoLabelConfig(k_organ=3, k_tumor=1))
    assert [s.case_id for s in sel] == ["c", "e", "a", "b", "d"]        # organ-rank order
    assert [s.organ_rank for s in sel] == [1, 2, 3, 4, 5]
    s = by_id(sel)
    assert {c for c, x in s.items() if x.selected} == {"c", "e", "a"}
    assert {c for c, x in s.items() if x.keep_tumor} == {"e"}            # least tumor-uncertain of K1
    assert s["e"].tumor_rank == 1 and s["a"].tumor_rank == 2 and s["c"].tumor_rank == 3
    assert s["b"].tumor_rank is None and s["b"].label_type == ()
    assert s["e"].label_type == ORG14
    assert s["a"].label_type == ORGANS and s["c"].label_type == ORGANS  # unannotated (default)


def test_background_mode_claims_tumor_annotated():
    s = by_id(select(SCORES, PseudoLabelConfig(k_organ=3, k_tumor=1, unselected_tumor="background")))
    assert s["a"].label_type == ORG14 and not s["a"].keep_tumor


def test_fractions():
    # K1 = round(0.6 * 5) = 3; K2 = round(0.34 * 3) = 1 (fraction of the selected)
    sel = select(SCORES, PseudoLabelConfig(k_organ=0.6, k_tumor=0.34))
    assert sum(s.selected for s in sel) == 3 and sum(s.keep_tumor for s in sel) == 1
    assert resolve_k(0.5, 5) == 3 and resolve_k(0.0, 5) == 0 and resolve_k(1, 5) == 1


def test_ties_broken_by_case_id():
    tied = table({"z": (0.2, 0.3), "m": (0.2, 0.3), "b": (0.2, 0.3), "a": (0.9, 0.0)})
    sel = select(tied, PseudoLabelConfig(k_organ=2, k_tumor=1))
    assert [s.case_id for s in sel] == ["b", "m", "z", "a"]
    assert [s.case_id for s in sel if s.keep_tumor] == ["b"]
    # independent of input order
    assert select(dict(reversed(list(tied.items()))), PseudoLabelConfig(k_organ=2, k_tumor=1)) == sel


def test_counts_above_available_are_clipped_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        sel = select(SCORES, PseudoLabelConfig(k_organ=1000, k_tumor=100))
    assert all(s.selected for s in sel) and all(s.keep_tumor for s in sel)
    assert "k_organ=1000 exceeds" in caplog.text and "k_tumor=100 exceeds" in caplog.text


def test_nan_scores_ranked_last_and_never_kept(caplog):
    t = table({"x": (math.nan, 0.1), "y": (0.3, math.nan), "w": (0.4, 0.2)})
    with caplog.at_level(logging.WARNING):
        sel = select(t, PseudoLabelConfig(k_organ=3, k_tumor=2))
    s = by_id(sel)
    assert [c.case_id for c in sel] == ["y", "w", "x"]
    assert not s["x"].selected                                   # no organs predicted
    assert s["y"].selected and not s["y"].keep_tumor             # no tumor to keep
    assert s["w"].keep_tumor and s["y"].tumor_rank == 2
    assert "no organ score" in caplog.text and "have a tumor score" in caplog.text


def test_other_scores_and_overlap_direction():
    t = {"a": {"organ_overlap": 0.9, "tumor_overlap": 0.1},
         "b": {"organ_overlap": 0.5, "tumor_overlap": 0.8}}
    sel = select(t, PseudoLabelConfig(k_organ=1, k_tumor=1, score="overlap"))  # type: ignore[arg-type]
    assert sel[0].case_id == "a" and sel[0].selected                 # higher Dice = more confident
    with pytest.raises(ValueError, match="organ_disagreement"):
        select(SCORES, PseudoLabelConfig(score="disagreement"))


@pytest.mark.parametrize("k", [-1, 2.5, math.inf])
def test_bad_k_rejected(k):
    with pytest.raises(ValueError):
        resolve_k(k, 10)


def test_final_label_drops_tumor_unless_kept():
    lab = np.array([[[0, 1, 14, 13]]], np.uint8)
    s = by_id(select(SCORES, PseudoLabelConfig(k_organ=3, k_tumor=1)))
    assert final_label(lab, s["e"]).tolist() == [[[0, 1, 14, 13]]]
    assert final_label(lab, s["a"]).tolist() == [[[0, 1, 0, 13]]]
    sb = by_id(select(SCORES, PseudoLabelConfig(k_organ=3, k_tumor=1, unselected_tumor="background")))
    assert final_label(lab, sb["a"]).tolist() == [[[0, 1, 0, 13]]]
    with pytest.raises(ValueError, match="not selected"):
        final_label(lab, s["b"])


def test_organ_fraction_counts_all_cases_but_selects_only_scored_ones(caplog):
    t = table({"a": (0.1, 0.1), "b": (0.2, 0.2), "c": (math.nan, math.nan), "d": (math.nan, 0.3)})
    with caplog.at_level(logging.WARNING):
        sel = select(t, PseudoLabelConfig(k_organ=0.75, k_tumor=1))   # round(0.75 * 4) = 3 > 2 valid
    assert [s.case_id for s in sel if s.selected] == ["a", "b"]
    assert "only 2 cases have an organ score" in caplog.text


def test_no_nan_ever_reaches_the_selection_and_the_table_says_why():
    nan, inf = math.nan, math.inf
    t = {"a": {"organ_entropy": 0.1, "tumor_entropy": nan, "tumor_voxels": 0.0},
         "b": {"organ_entropy": nan, "organ_voxels": 0.0, "tumor_entropy": 0.2},
         "c": {"organ_entropy": 0.3, "tumor_entropy": 0.4},
         "d": {"organ_entropy": inf, "tumor_entropy": 0.05},
         "e": {"organ_entropy": 0.2, "tumor_entropy": None}}
    sel = select(t, PseudoLabelConfig(k_organ=5, k_tumor=5))
    for x in sel:
        for v in (x.organ_score, x.tumor_score):
            assert v is None or math.isfinite(v), x
    s = by_id(sel)
    assert [x.case_id for x in sel] == ["a", "e", "c", "b", "d"]          # not computable: last
    assert not s["b"].selected and not s["d"].selected
    assert s["b"].organ_note == "no member predicts any organ" and "inf" in s["d"].organ_note
    assert s["a"].tumor_note == "no member predicts a tumor" and s["e"].tumor_note
    assert [s[c].tumor_rank for c in "ace"] == [2, 1, 3] and s["c"].keep_tumor
    assert not s["a"].keep_tumor and not s["e"].keep_tumor
    row = s["a"].row()
    assert row["tumor_score"] == "" and row["tumor_note"] == "no member predicts a tumor"
    assert row["organ_note"] == ""


def test_tumor_ranked_by_its_own_score_with_a_reason_for_single_members():
    # the paper's setup: organs by disagreement (fine model + external members), tumors by the
    # fine model's entropy; the tumor disagreement of a one-member tumor group is never used
    t = {c: {"organ_disagreement": o, "tumor_disagreement": math.nan, "tumor_members": 1.0,
             "tumor_entropy": te, "organ_entropy": 0.5}
         for c, (o, te) in {"a": (0.1, 0.9), "b": (0.2, 0.1), "c": (0.3, 0.5)}.items()}
    sel = by_id(select(t, PseudoLabelConfig(k_organ=3, k_tumor=1, score="disagreement",
                                            tumor_score="entropy")))
    assert [c for c, x in sel.items() if x.keep_tumor] == ["b"]         # not case-id order
    assert sel["a"].organ_score == 0.1 and sel["b"].tumor_score == 0.1
    same = by_id(select(t, PseudoLabelConfig(k_organ=3, k_tumor=1, score="disagreement")))
    assert not any(x.keep_tumor for x in same.values())
    assert same["a"].tumor_score is None
    assert same["a"].tumor_note == "tumor_disagreement needs >= 2 members scoring tumor, has 1"
