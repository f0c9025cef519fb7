"""The scores of an evaluation: per case and class, with the FLARE23 summary means.

Its own module so that :mod:`flareseg.evaluation.evaluate` (which fills it) and
:mod:`flareseg.evaluation.report` (which writes it) both import it, and not each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from flareseg.labels import CLASS_NAMES, ORGANS, TUMOR


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


@dataclass
class EvaluationResult:
    """Scores per case and class plus the FLARE23 summary.

    ``scores[case][class] = (dsc, nsd)``; ``errors[case]`` is why a case could not be scored;
    ``missing``/``extra`` are reference cases without prediction and predictions without reference.
    """

    classes: tuple[int, ...]
    scores: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """Long table: one row per (case, class) with ``dsc`` and ``nsd``."""
        return [{"case": case, "class": c, "name": CLASS_NAMES[c], "dsc": d, "nsd": n}
                for case in sorted(self.scores) for c, (d, n) in sorted(self.scores[case].items())]

    def per_class(self) -> dict[int, tuple[float, float]]:
        """Mean (DSC, NSD) of each class over the scored cases."""
        return {c: (_mean([s[c][0] for s in self.scores.values()]),
                    _mean([s[c][1] for s in self.scores.values()])) for c in self.classes}

    def group(self, classes: Sequence[int]) -> tuple[float, float]:
        """Mean over ``classes`` (those evaluated) of the per-class means."""
        pc = self.per_class()
        cs = [c for c in classes if c in pc]
        return _mean([pc[c][0] for c in cs]), _mean([pc[c][1] for c in cs])

    @property
    def organ(self) -> tuple[float, float]:
        return self.group(ORGANS)

    @property
    def tumor(self) -> tuple[float, float]:
        return self.group((TUMOR,))

    @property
    def overall(self) -> tuple[float, float]:
        return self.group(self.classes)

    @property
    def ok(self) -> bool:
        """True when every reference case had a readable prediction on its grid."""
        return not self.errors and not self.missing
