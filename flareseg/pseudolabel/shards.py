"""Sharded, resumable per-case scoring: ``--shard i/N`` jobs write into one output folder.

Layout under ``out_dir``:

- ``scores/<case>.json``: ``{"case_id", "fingerprint", "scores": {...}}``, written atomically
  *after* the scorer returned, so it marks the case finished (a scorer writes its own outputs,
  e.g. the pseudo label, before returning).  ``NaN`` is stored as ``null``.
- ``errors/<case>.json``: the last failure of a case (removed when it later succeeds).

A case whose score file exists with the same ``fingerprint`` (e.g. a digest of the model and the
members) is never recomputed; a different fingerprint recomputes it.

Sharding (``i`` in ``0..N-1``): ``"hash"`` (default) puts a case on shard
``sha256(case_id) mod N`` — a case's shard depends only on its id and N, so adding cases never
moves existing ones (a job rerun after new scans arrive finds its finished cases, even with
per-shard output folders); shard sizes are only balanced on average.  ``"round_robin"`` deals the
sorted ids in turn — exactly balanced, but inserting a case shifts later ones to other shards
(harmless when all shards share ``out_dir``: moved cases are found finished there).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

from tqdm import tqdm

from flareseg.cases import ShardMethod, shard
from flareseg.io import read_json, write_json

log = logging.getLogger(__name__)

Scorer = Callable[[str], Mapping[str, float]]


def parse_shard(spec: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``; shard indices are 0-based (``0/4`` .. ``3/4``)."""
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard expects i/N with integers, got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: need N >= 1 and 0 <= i < N (0-based)")
    return i, n


def _check_id(case_id: str) -> None:
    if not case_id or "/" in case_id or os.sep in case_id or case_id.startswith("."):
        raise ValueError(f"case id {case_id!r} cannot name a file")


def score_path(out_dir: os.PathLike | str, case_id: str) -> Path:
    _check_id(case_id)
    return Path(out_dir) / "scores" / f"{case_id}.json"


def _error_path(out_dir: os.PathLike | str, case_id: str) -> Path:
    return Path(out_dir) / "errors" / f"{case_id}.json"


def _to_json(scores: Mapping[str, float]) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scores.items()}


def _from_json(scores: Mapping[str, object]) -> dict[str, float]:
    return {k: (math.nan if v is None else float(v)) for k, v in scores.items()}  # type: ignore[arg-type]


def load_result(out_dir: os.PathLike | str, case_id: str,
                fingerprint: Optional[str] = None) -> Optional[dict[str, float]]:
    """Stored scores of a finished case, or ``None`` if absent, unreadable or of another fingerprint."""
    p = score_path(out_dir, case_id)
    if not p.exists():
        return None
    try:
        d = read_json(p)
        if d.get("case_id") != case_id:
            raise ValueError(f"holds case {d.get('case_id')!r}")
        scores = _from_json(d["scores"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("%s: unreadable score file (%s); recomputing", p, e)
        return None
    if fingerprint is not None and d.get("fingerprint") != fingerprint:
        return None
    return scores


def save_result(out_dir: os.PathLike | str, case_id: str, scores: Mapping[str, float],
                fingerprint: Optional[str] = None) -> Path:
    """Write a case's scores atomically (and clear its error file)."""
    p = write_json({"case_id": case_id, "fingerprint": fingerprint, "scores": _to_json(scores)},
                   score_path(out_dir, case_id))
    with contextlib.suppress(FileNotFoundError):
        _error_path(out_dir, case_id).unlink()
    return p


@dataclass
class ShardSummary:
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # case -> error message


def run_shard(case_ids: Iterable[str], scorer: Scorer, out_dir: os.PathLike | str, i: int = 0,
              n: int = 1, fingerprint: Optional[str] = None, method: ShardMethod = "hash") -> ShardSummary:
    """Score this shard's unfinished cases with ``scorer(case_id) -> scores``.

    A failing case is logged, recorded in ``errors/<case>.json`` and skipped; the others go on.
    """
    todo = shard(case_ids, i, n, method)
    summary = ShardSummary()
    for case in tqdm(todo, desc=f"uncertainty shard {i}/{n}", unit="case"):
        if load_result(out_dir, case, fingerprint) is not None:
            summary.skipped.append(case)
            continue
        try:
            scores = scorer(case)
        except Exception as e:  # batch job: report and continue with the other cases
            log.error("case %s failed: %s", case, e)
            summary.failed[case] = f"{type(e).__name__}: {e}"
            write_json({"case_id": case, "error": summary.failed[case]}, _error_path(out_dir, case))
            continue
        save_result(out_dir, case, scores, fingerprint)
        summary.computed.append(case)
    log.info("shard %d/%d: %d computed, %d already done, %d failed", i, n, len(summary.computed),
             len(summary.skipped), len(summary.failed))
    return summary


def merge_scores(out_dir: os.PathLike | str, case_ids: Optional[Iterable[str]] = None,
                 fingerprint: Optional[str] = None) -> dict[str, dict[str, float]]:
    """All finished cases' scores (sorted by case id) from every shard's files in ``out_dir``.

    With ``case_ids``, only those are returned and missing ones are logged (a shard not finished
    yet, or failed cases); the ranking is then :func:`flareseg.pseudolabel.selection.select`.
    """
    d = Path(out_dir) / "scores"
    ids = sorted(set(case_ids)) if case_ids is not None else sorted(
        p.name[: -len(".json")] for p in d.glob("*.json") if not p.name.startswith("."))
    table: dict[str, dict[str, float]] = {}
    missing = []
    for c in ids:
        s = load_result(out_dir, c, fingerprint)
        if s is None:
            missing.append(c)
        else:
            table[c] = s
    if missing:
        log.warning("%d case(s) have no (current) scores yet, e.g. %s", len(missing), missing[:5])
    return table
