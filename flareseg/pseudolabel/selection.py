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
``NaN`` scores (group not predicted at all) are ranked last and never selected: a case without
organs is no organ pseudo label, a case without a predicted tumor has no tumor to keep.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from flareseg.config import PseudoLabelConfig
from flareseg.labels import ORGANS, TUMOR, LabelType, type_to_str
from flareseg.pseudolabel.uncertainty import UNCERTAINTY_SIGN, score_key

log = logging.getLogger(__name__)

ScoreTable = Mapping[str, Mapping[str, float]]   # case id -> flat score dict


@dataclass(frozen=True)
class Selection:
    """One case's place in the ranking and the label type its pseudo label gets."""
    case_id: str
    organ_score: float
    tumor_score: float
    organ_rank: int                 # 1 = most organ-confident
    tumor_rank: Optional[int]       # 1 = least tumor-uncertain among the selected; None if unselected
    selected: bool                  # in the K1 most organ-confident
    keep_tumor: bool                # in the K2: tumor voxels stay in the written label
    label_type: LabelType           # () for unselected cases

    def row(self) -> dict:
        """Flat dict for CSV/JSON (label type as ``1_2_..`` string, ``""`` for missing values)."""
        return {"case_id": self.case_id, "organ_rank": self.organ_rank,
                "organ_score": self.organ_score, "selected": int(self.selected),
                "tumor_rank": "" if self.tumor_rank is None else self.tumor_rank,
                "tumor_score": self.tumor_score, "keep_tumor": int(self.keep_tumor),
                "label_type": type_to_str(self.label_type) if self.selected else ""}


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


def _sort_key(scores: Mapping[str, float], key: str, sign: int, case: str) -> tuple:
    v = scores.get(key, math.nan)
    v = math.nan if v is None else float(v)
    return (math.isnan(v), sign * v if not math.isnan(v) else 0.0, case)


def _value(scores: Mapping[str, float], key: str) -> float:
    v = scores.get(key)
    return math.nan if v is None else float(v)


def select(scores: ScoreTable, cfg: PseudoLabelConfig) -> list[Selection]:
    """Rank and select cases; returns one :class:`Selection` per case, in organ-rank order.

    Raises ``ValueError`` if the configured score column is missing (e.g. ``disagreement`` with a
    single member).
    """
    organ_key, tumor_key = score_key("organ", cfg.score), score_key("tumor", cfg.score)
    sign = UNCERTAINTY_SIGN[cfg.score]
    for case, s in scores.items():
        for key in (organ_key, tumor_key):
            if key not in s:
                raise ValueError(f"case {case}: no '{key}' score (score '{cfg.score}' needs >= 2 "
                                 f"members for disagreement/inconsistency/overlap)")
    order = sorted(scores, key=lambda c: _sort_key(scores[c], organ_key, sign, c))
    valid = [c for c in order if not math.isnan(_value(scores[c], organ_key))]
    if len(valid) < len(order):
        log.warning("%d case(s) predict no organ at all; they are never selected", len(order) - len(valid))
    k1 = resolve_k(cfg.k_organ, len(order), "k_organ")   # a fraction is of all scored cases
    if k1 > len(valid):
        log.warning("k_organ=%d but only %d cases predict organs; selecting %d", k1, len(valid), len(valid))
        k1 = len(valid)
    chosen = valid[:k1]
    tumor_order = sorted(chosen, key=lambda c: _sort_key(scores[c], tumor_key, sign, c))
    with_tumor = [c for c in tumor_order if not math.isnan(_value(scores[c], tumor_key))]
    k2 = resolve_k(cfg.k_tumor, len(chosen), "k_tumor")   # a fraction is of the K1 selected
    if k2 > len(with_tumor):
        log.warning("only %d of the %d selected cases predict a tumor; keeping tumor in %d instead of %d",
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
                             tumor_rank.get(c), sel, c in keep, lt))
    log.info("selected %d of %d cases (score %s); tumor kept in %d, dropped in %d (%s)",
             len(chosen), len(order), cfg.score, len(keep), len(chosen) - len(keep), cfg.unselected_tumor)
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
