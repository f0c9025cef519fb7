"""Label-type batches: every batch holds cases of one label type (pure python/numpy, seeded).

The type of a batch is drawn with probability proportional to its number of cases
(``proportional``), uniformly over types (``uniform``), or from explicit weights.  Within a batch
cases are drawn without replacement; a type with fewer cases than the batch size takes all of its
cases once and fills the rest with replacement, so small types are never dropped.

Two random streams: the type stream depends only on ``seed``, the case stream on ``seed`` and
``rank``.  DDP ranks built with the same seed therefore train on the same label type in every
step (needed for DDP batch Dice in the merge-max loss) but on different cases.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence, Union

import numpy as np

from flareseg.labels import LabelType, label_type, str_to_type, type_to_str

Mode = Literal["proportional", "uniform"]
Weights = Union[Mode, Mapping[Union[str, Sequence[int]], float]]


def _as_type(t: str | Iterable[int]) -> LabelType:
    return str_to_type(t) if isinstance(t, str) else label_type(t)


def type_probabilities(counts: Mapping[LabelType, int], mode: Weights = "proportional") -> dict[LabelType, float]:
    """Draw probability per label type.

    ``counts``: cases per type.  ``mode``: ``"proportional"`` (to ``counts``), ``"uniform"``, or a
    mapping type -> non-negative weight (types as tuples or strings like ``"1_2_14"``) that must
    name exactly the types in ``counts``.
    """
    if not counts:
        raise ValueError("no label types to sample from")
    if mode == "proportional":
        w = {t: float(n) for t, n in counts.items()}
    elif mode == "uniform":
        w = {t: 1.0 for t in counts}
    elif isinstance(mode, Mapping):
        w = {_as_type(t): float(v) for t, v in mode.items()}
        unknown = sorted(set(w) - set(counts))
        missing = sorted(set(counts) - set(w))
        if unknown or missing:
            raise ValueError(
                "type weights must name exactly the label types of the cases: "
                f"unknown {[type_to_str(t) for t in unknown]}, missing {[type_to_str(t) for t in missing]}"
            )
        if any(v < 0 or not np.isfinite(v) for v in w.values()):
            raise ValueError(f"type weights must be finite and non-negative, got {mode!r}")
    else:
        raise ValueError(f"unknown type sampling mode {mode!r} (valid: proportional, uniform, or a weights mapping)")
    total = sum(w.values())
    if total <= 0:
        raise ValueError("type weights sum to zero")
    return {t: w[t] / total for t in sorted(counts)}


def sample_cases(rng: np.random.Generator, cases: Sequence[str], batch_size: int) -> list[str]:
    """``batch_size`` cases: without replacement, or all cases plus draws with replacement if too few."""
    n = len(cases)
    if n >= batch_size:
        idx = rng.choice(n, batch_size, replace=False)
    else:
        idx = rng.permutation(np.concatenate([np.arange(n), rng.integers(0, n, batch_size - n)]))
    return [cases[i] for i in idx]


class LabelTypeBatchSampler:
    """Infinite stream of single-label-type batches.

    ``case_types``: case id -> annotated foreground classes (empty types are rejected).
    ``mode``: see :func:`type_probabilities`.  ``seed``: ``None`` = fresh entropy.
    ``rank``: DDP rank (changes the case stream only).
    """

    def __init__(
        self,
        case_types: Mapping[str, Iterable[int] | str],
        batch_size: int,
        mode: Weights = "proportional",
        seed: int | None = None,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        by_type: dict[LabelType, list[str]] = {}
        for case, t in case_types.items():
            lt = _as_type(t)
            if not lt:
                raise ValueError(f"case {case!r} has no annotated class; it cannot be in a training batch")
            by_type.setdefault(lt, []).append(str(case))
        self._cases = {t: tuple(sorted(c)) for t, c in sorted(by_type.items())}
        self.batch_size = int(batch_size)
        self._probs = type_probabilities({t: len(c) for t, c in self._cases.items()}, mode)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)
        self.seed = int(seed)
        self.rank = int(rank)
        self._type_rng = np.random.default_rng([0, self.seed])
        self._case_rng = np.random.default_rng([1, self.rank, self.seed])
        self._types = tuple(self._probs)
        self._p = np.array([self._probs[t] for t in self._types])

    @property
    def probabilities(self) -> dict[LabelType, float]:
        """Label type -> draw probability (sums to 1)."""
        return dict(self._probs)

    @property
    def types(self) -> tuple[LabelType, ...]:
        return self._types

    def next_type(self) -> LabelType:
        return self._types[int(self._type_rng.choice(len(self._types), p=self._p))]

    def next_batch(self) -> tuple[LabelType, list[str]]:
        """``(label_type, [case ids])`` for the next batch."""
        t = self.next_type()
        return t, sample_cases(self._case_rng, self._cases[t], self.batch_size)

    def __iter__(self) -> Iterator[tuple[LabelType, list[str]]]:
        return self

    def __next__(self) -> tuple[LabelType, list[str]]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Random-stream state, e.g. to store in a checkpoint and resume the same sequence."""
        return {"type_rng": self._type_rng.bit_generator.state, "case_rng": self._case_rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._type_rng.bit_generator.state = state["type_rng"]
        self._case_rng.bit_generator.state = state["case_rng"]


def foreground_classes_for_oversampling(t: Iterable[int] | str) -> tuple[int, ...]:
    """Classes foreground oversampling may aim at for a case of label type ``t``: its annotated classes."""
    return _as_type(t)


def choose_oversampling_class(
    rng: np.random.Generator | np.random.RandomState, t: Iterable[int] | str,
    class_locations: Mapping[Any, Sequence]
) -> int | None:
    """Pick, uniformly, an annotated class that has voxels in this case (nnU-Net ``class_locations``),
    or ``None``.

    ``None`` means no annotated class is present in the case: crop at random.  The result can be
    passed as ``overwrite_class`` to nnU-Net's ``get_bbox``.  ``rng``: anything with numpy's
    ``choice`` (a ``Generator``, a ``RandomState`` or the ``np.random`` module); the trainer's data
    loader passes ``np.random``, the stream nnU-Net's own class choice draws from.
    """
    eligible = [c for c in foreground_classes_for_oversampling(t) if len(class_locations.get(c, ())) > 0]
    if not eligible:
        return None
    return int(eligible[int(rng.choice(len(eligible)))])
