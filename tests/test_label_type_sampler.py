import math
from collections import Counter

import numpy as np
import pytest

from flareseg.labels import type_to_str
from flareseg.sampling.label_type import (
    LabelTypeBatchSampler,
    choose_oversampling_class,
    foreground_classes_for_oversampling,
    type_probabilities,
)

FULL = tuple(range(1, 15))
ORG4 = (1, 2, 3, 13)
TUM = (14,)


def _cases():
    cases = {f"full_{i:02d}": FULL for i in range(12)}
    cases.update({f"org_{i}": ORG4 for i in range(6)})
    cases.update({"tum_0": TUM, "tum_1": "14"})  # tuple or string types
    return cases


def _assert_frequencies(sampler, expected, n=3000):
    counts = Counter(sampler.next_type() for _ in range(n))
    for t, p in expected.items():
        tol = 4.5 * math.sqrt(p * (1 - p) / n)
        assert abs(counts[t] / n - p) <= tol, (t, counts[t] / n, p)


def test_one_type_per_batch_and_batch_size():
    cases = _cases()
    s = LabelTypeBatchSampler(cases, batch_size=4, seed=0)
    for _ in range(200):
        t, batch = s.next_batch()
        assert len(batch) == 4
        assert all(cases[c] == t or cases[c] == type_to_str(t) for c in batch)


def test_proportional_frequencies():
    s = LabelTypeBatchSampler(_cases(), batch_size=2, seed=1)
    expected = {FULL: 12 / 20, ORG4: 6 / 20, TUM: 2 / 20}
    assert s.probabilities == pytest.approx(expected)
    _assert_frequencies(s, expected)


def test_uniform_and_explicit_weights():
    s = LabelTypeBatchSampler(_cases(), batch_size=2, mode="uniform", seed=2)
    _assert_frequencies(s, {t: 1 / 3 for t in (FULL, ORG4, TUM)})
    s = LabelTypeBatchSampler(_cases(), 2, mode={"1_2_3_4_5_6_7_8_9_10_11_12_13_14": 1, ORG4: 0, "14": 3}, seed=3)
    assert s.probabilities[ORG4] == 0
    _assert_frequencies(s, {FULL: 0.25, ORG4: 0.0, TUM: 0.75})


def test_small_types_sample_with_replacement():
    s = LabelTypeBatchSampler({"a": TUM, "b": ORG4, "c": ORG4, "d": ORG4, **{f"f{i}": FULL for i in range(9)}},
                              batch_size=5, seed=4)
    seen = {}
    for _ in range(300):
        t, batch = s.next_batch()
        seen.setdefault(t, []).append(batch)
    assert set(seen) == {TUM, ORG4, FULL}  # no type dropped
    assert all(b == ["a"] * 5 for b in seen[TUM])
    for b in seen[ORG4]:  # every case once, the rest repeats
        assert set(b) == {"b", "c", "d"} and len(b) == 5
    for b in seen[FULL]:  # enough cases: no repeats within a batch
        assert len(set(b)) == 5


def test_same_seed_same_sequence_and_rank_streams():
    cases = _cases()
    reordered = dict(reversed(list(cases.items())))

    def seq(s, n=50):
        return [s.next_batch() for _ in range(n)]

    a = seq(LabelTypeBatchSampler(cases, 3, seed=7))
    assert a == seq(LabelTypeBatchSampler(reordered, 3, seed=7))
    assert a != seq(LabelTypeBatchSampler(cases, 3, seed=8))
    r1 = seq(LabelTypeBatchSampler(cases, 3, seed=7, rank=1))
    assert [t for t, _ in r1] == [t for t, _ in a]  # same types on every rank
    assert [b for _, b in r1] != [b for _, b in a]  # different cases


def test_state_dict_resumes_sequence():
    s = LabelTypeBatchSampler(_cases(), 3, seed=9)
    for _ in range(5):
        s.next_batch()
    state = s.state_dict()
    expected = [s.next_batch() for _ in range(10)]
    t = LabelTypeBatchSampler(_cases(), 3, seed=0)
    t.load_state_dict(state)
    assert [t.next_batch() for _ in range(10)] == expected


def test_bad_inputs():
    with pytest.raises(ValueError, match="no annotated class"):
        LabelTypeBatchSampler({"x": ()}, 2)
    with pytest.raises(ValueError, match="exactly"):
        LabelTypeBatchSampler(_cases(), 2, mode={FULL: 1, ORG4: 1})
    with pytest.raises(ValueError, match="batch_size"):
        LabelTypeBatchSampler(_cases(), 0)
    with pytest.raises(ValueError, match="no label types"):
        type_probabilities({})


def test_oversampling_targets_annotated_classes_only():
    assert foreground_classes_for_oversampling((14, 1, 0)) == (1, 14)
    assert foreground_classes_for_oversampling("1_2_14") == (1, 2, 14)
    rng = np.random.default_rng(0)
    locations = {1: np.zeros((5, 4)), 2: np.zeros((0, 4)), 5: np.zeros((3, 4)), 14: np.zeros((2, 4))}
    picks = {choose_oversampling_class(rng, (1, 2, 14), locations) for _ in range(100)}
    assert picks == {1, 14}  # 2 has no voxels, 5 is not annotated
    assert choose_oversampling_class(rng, (2, 3), locations) is None
