"""Sharded scoring equals the unsharded run; reruns skip finished cases; merge builds the table."""
from __future__ import annotations

import math

import numpy as np
import pytest

from flareseg.config import PseudoLabelConfig
from flareseg.io import read_json
from flareseg.pseudolabel.selection import select
from flareseg.pseudolabel.shards import (load_result, merge_scores, parse_shard,
                                         run_shard, save_result, shard)
from flareseg.pseudolabel.uncertainty import case_scores

CASES = [f"case_{i:03d}" for i in range(23)]


class CountingScorer:
    """Real uncertainty of a seeded random probability volume per case; counts calls."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, case: str) -> dict[str, float]:
        self.calls.append(case)
        if case in self.fail:
            raise RuntimeError("unreadable image")
        rng = np.random.default_rng(int(case[-3:]))
        logits = rng.normal(size=(15, 2, 3, 4)).astype(np.float32) * 2
        p = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
        return case_scores(p)


@pytest.mark.parametrize("method", ["hash", "round_robin"])
def test_shards_partition_cases(method):
    parts = [shard(CASES, i, 4, method) for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(CASES)
    assert all(p == sorted(p) for p in parts)
    assert shard(list(reversed(CASES)), 1, 4, method) == parts[1]     # input order irrelevant


def test_hash_shard_stable_when_cases_are_added():
    before = {c: i for i in range(3) for c in shard(CASES, i, 3)}
    after = {c: i for i in range(3) for c in shard(CASES + ["new_a", "new_b"], i, 3)}
    assert all(after[c] == before[c] for c in CASES)


def test_shards_together_equal_unsharded(tmp_path):
    run_shard(CASES, CountingScorer(), tmp_path / "one")
    for i in range(3):
        run_shard(CASES, CountingScorer(), tmp_path / "many", i, 3)
    a, b = merge_scores(tmp_path / "one"), merge_scores(tmp_path / "many")
    assert list(a) == CASES and a == b
    cfg = PseudoLabelConfig(k_organ=10, k_tumor=4)
    assert select(a, cfg) == select(b, cfg)


def test_rerun_skips_finished_cases_and_recomputes_on_new_fingerprint(tmp_path):
    first = CountingScorer()
    run_shard(CASES[:10], first, tmp_path, fingerprint="model-A")
    assert len(first.calls) == 10
    again = CountingScorer()
    summary = run_shard(CASES, again, tmp_path, fingerprint="model-A")
    assert sorted(again.calls) == CASES[10:]                     # only the unfinished ones
    assert len(summary.skipped) == 10 and len(summary.computed) == 13
    newer = CountingScorer()
    run_shard(CASES[:2], newer, tmp_path, fingerprint="model-B")
    assert newer.calls == CASES[:2]


def test_failures_are_recorded_and_others_continue(tmp_path):
    summary = run_shard(CASES[:4], CountingScorer(fail={"case_001"}), tmp_path)
    assert list(summary.failed) == ["case_001"] and len(summary.computed) == 3
    assert [p.name for p in (tmp_path / "errors").iterdir()] == ["case_001.json"]
    assert "unreadable image" in read_json(tmp_path / "errors" / "case_001.json")["error"]
    assert "case_001" not in merge_scores(tmp_path, CASES[:4])
    run_shard(CASES[:4], CountingScorer(), tmp_path)              # retry succeeds
    assert not any((tmp_path / "errors").iterdir()) and len(merge_scores(tmp_path)) == 4


def test_nan_round_trips_and_corrupt_file_is_recomputed(tmp_path):
    save_result(tmp_path, "x", {"tumor_entropy": math.nan, "organ_entropy": 0.5})
    s = load_result(tmp_path, "x")
    assert math.isnan(s["tumor_entropy"]) and s["organ_entropy"] == 0.5
    (tmp_path / "scores" / "case_005.json").write_text("{not json")    # killed mid-write elsewhere
    assert load_result(tmp_path, "case_005") is None
    scorer = CountingScorer()
    run_shard(["case_005"], scorer, tmp_path)
    assert scorer.calls == ["case_005"] and load_result(tmp_path, "case_005") is not None


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "a/b", "1"):
        with pytest.raises(ValueError):
            parse_shard(bad)
