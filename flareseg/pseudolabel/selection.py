"""Select pseudo-labeled cases by uncertainty: top-K1 organ-confident, tumors kept in K2 of them.

Given per-case scores (:mod:`flareseg.pseudolabel.uncertainty`), cases are ranked by organ
uncertainty (``organ_<score>``, ascending; ties by case id).  The K1 best are *selected*.  Among
them, cases are ranked by tumor uncertainty (``tumor_<score>``) and the K2 best *keep their tumor*:
label type 1..14.  The other K1 - K2 selected cases drop their tumor voxels (set to 0 in the
written label) and get, per ``unselected_tumor``:

- ``"unannotated"``: label type 1..13 (tumor unknown; the merge-max loss merges tumor into
  background there, so the dropped tumor voxels teach nothing about tumor);
- ``"background"``: label type 1..14 — tumor is *claimed annotated and absent*, so the model is
  trained to predict no tumor in these cases (the dropped voxels become tumor negatives).

Counts: ``k`` >= 1 is a count (must be whole); 0 <= ``k`` < 1 a fraction, K1 of all cases and K2
of the K1 selected, rounded to nearest (half up).  Counts larger than available are clipped with a warning.
Organs are ranked by ``pseudolabel.score``, tumors by ``pseudolabel.tumor_score`` (default: the
same score).  A score that cannot be computed (``NaN``, infinite or missing: the group is not
predicted at all, or a multi-member score has fewer than two members for the group) never enters
the selection: that case gets no score for the group (``None``), is ranked last, is never selected
(organs) / never keeps its tumor, and its ``organ_note`` / ``tumor_note`` says why (also in
``selection.csv``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from flareseg.config import PseudoLabelConfig
from flareseg.labels import ORGANS, TUMOR, LabelType, type_to_str
from flareseg.pseudolabel.uncertainty import MULTI_MEMBER_SCORES, UNCERTAINTY_SIGN, score_key

log = logging.getLogger(__name__)

ScoreTable = Mapping[str, Mapping[str, float]]   # case id -> flat score dict


@dataclass(frozen=True)
class Selection:
    """One case's place in the ranking and the label type its pseudo label gets."""
    case_id: str
    organ_score: Optional[float]    # None: not computable (see organ_note)
    tumor_score: Optional[float]    # None: not computable (see tumor_note)
    organ_rank: int                 # 1 = most organ-confident
    tumor_rank: Optional[int]       # 1 = least tumor-uncertain among the selected; None if unselected
    selected: bool                  # in the K1 most organ-confident
    keep_tumor: bool                # in the K2: tumor voxels stay in the written label
    label_type: LabelType           # () for unselected cases
    organ_note: str = ""            # why organ_score is None ("" when it is a number)
    tumor_note: str = ""            # why tumor_score is None

    def row(self) -> dict:
        """Flat dict for CSV/JSON (label type as ``1_2_..`` string, ``""`` for missing values)."""
        return {"case_id": self.case_id, "organ_rank": self.organ_rank,
                "organ_score": "" if self.organ_score is None else self.organ_score,
                "selected": int(self.selected),
                "tumor_rank": "" if self.tumor_rank is None else self.tumor_rank,
                "tumor_score": "" if self.tumor_score is None else self.tumor_score,
                "keep_tumor": int(self.keep_tumor),
                "label_type": type_to_str(self.label_type) if self.selected else "",
                "organ_note": self.organ_note, "tumor_note": self.tumor_note}


def resolve_k(k: float, n: int, name: str = "k") -> int:
    """Count from ``k`` (count if >= 1, fraction of ``n`` if < 1), clipped to ``n`` with a warning."""
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"{name} must be a count >= 1 or a fraction in [0, 1), got {k!r}")
    if k < 1:
        count = int(math.floor(k * n + 0.5))
    else:
        if k != int(k):
            raise ValueError(f"{name}={k!r}: counts must be whole numbers (fractions are < 1)")
        count = int(k)
    if count > n:
        log.warning("%s=%d exceeds the %d available cases; using %d", name, count, n, n)
        count = n
    return count


def _value(scores: Mapping[str, float], key: str) -> Optional[float]:
    """The score, or None where it is missing or not a finite number."""
    v = scores.get(key)
    try:
        v = None if v is None else float(v)
    except (TypeError, ValueError):
        return None
    return v if v is not None and math.isfinite(v) else None


def _sort_key(scores: Mapping[str, float], key: str, sign: int, case: str) -> tuple:
    v = _value(scores, key)
    return (v is None, 0.0 if v is None else sign * v, case)


def missing_reason(scores: Mapping[str, float], group: str, score: str) -> str:
    """Why ``<group>_<score>`` of a case has no usable value ("" when it has one)."""
    key = score_key(group, score)
    if _value(scores, key) is not None:
        return ""
    v = scores.get(key)
    members = scores.get(score_key(group, "members"), scores.get("n_members"))
    if v is None or key not in scores:
        return f"no {key} score"
    if score in MULTI_MEMBER_SCORES and members is not None and float(members) < 2:
        return f"{key} needs >= 2 members scoring {group}, has {int(float(members))}"
    if scores.get(score_key(group, "voxels")) == 0:
        what = "a tumor" if group == "tumor" else "any organ"
        return f"no member predicts {what}"
    return f"{key} is {v} (not computable)"


def select(scores: ScoreTable, cfg: PseudoLabelConfig) -> list[Selection]:
    """Rank and select cases; returns one :class:`Selection` per case, in organ-rank order.

    Raises ``ValueError`` if the configured score column is missing (e.g. ``disagreement`` with a
    single member).
    """
    tumor_name = getattr(cfg, "tumor_score", None) or cfg.score
    organ_key, tumor_key = score_key("organ", cfg.score), score_key("tumor", tumor_name)
    sign, tumor_sign = UNCERTAINTY_SIGN[cfg.score], UNCERTAINTY_SIGN[tumor_name]
    for case, s in scores.items():
        for key, name in ((organ_key, cfg.score), (tumor_key, tumor_name)):
            if key not in s:
                raise ValueError(f"case {case}: no '{key}' score (score '{name}' needs >= 2 "
                                 f"members for disagreement/inconsistency/overlap)")
    order = sorted(scores, key=lambda c: _sort_key(scores[c], organ_key, sign, c))
    valid = [c for c in order if _value(scores[c], organ_key) is not None]
    if len(valid) < len(order):
        log.warning("%d case(s) have no organ score (no organ predicted, or not computable: organ_note in "
                    "selection.csv); they are never selected", len(order) - len(valid))
    k1 = resolve_k(cfg.k_organ, len(order), "k_organ")   # a fraction is of all scored cases
    if k1 > len(valid):
        log.warning("k_organ=%d but only %d cases have an organ score; selecting %d", k1, len(valid), len(valid))
        k1 = len(valid)
    chosen = valid[:k1]
    tumor_order = sorted(chosen, key=lambda c: _sort_key(scores[c], tumor_key, tumor_sign, c))
    with_tumor = [c for c in tumor_order if _value(scores[c], tumor_key) is not None]
    k2 = resolve_k(cfg.k_tumor, len(chosen), "k_tumor")   # a fraction is of the K1 selected
    if k2 > len(with_tumor):
        log.warning("only %d of the %d selected cases have a tumor score (the others predict no tumor "
                    "or cannot be scored: tumor_note in selection.csv); keeping tumor in %d instead of %d",
                    len(with_tumor), len(chosen), len(with_tumor), k2)
        k2 = len(with_tumor)
    keep = set(with_tumor[:k2])
    tumor_rank = {c: i + 1 for i, c in enumerate(tumor_order)}
    dropped_type = ORGANS + (TUMOR,) if cfg.unselected_tumor == "background" else ORGANS
    chosen_set = set(chosen)
    out = []
    for i, c in enumerate(order):
        sel = c in chosen_set
        lt: LabelType = (ORGANS + (TUMOR,) if c in keep else dropped_type) if sel else ()
        out.append(Selection(c, _value(scores[c], organ_key), _value(scores[c], tumor_key), i + 1,
                             tumor_rank.get(c), sel, c in keep, lt,
                             missing_reason(scores[c], "organ", cfg.score),
                             missing_reason(scores[c], "tumor", tumor_name)))
    log.info("selected %d of %d cases (organ score %s, tumor score %s); tumor kept in %d, dropped in %d (%s)",
             len(chosen), len(order), cfg.score, tumor_name, len(keep), len(chosen) - len(keep),
             cfg.unselected_tumor)
    return out


def final_label(pseudo_label: np.ndarray, sel: Selection) -> np.ndarray:
    """The label written for a selected case ``(Z, Y, X)``: tumor voxels set to 0 unless kept,
    and any class outside the label type set to 0."""
    if not sel.selected:
        raise ValueError(f"case {sel.case_id} is not selected; it gets no pseudo label")
    keep = np.zeros(max(int(pseudo_label.max()), TUMOR) + 1, dtype=bool)
    keep[list(sel.label_type)] = True
    if not sel.keep_tumor:
        keep[TUMOR] = False
    return np.where(keep[pseudo_label], pseudo_label, 0).astype(pseudo_label.dtype, copy=False)
