"""Label types a FLARE23 user can steer at import: the authors' JSON type file, per-case
overrides, and the table of the types an import ended with.

* ``case_to_partial_type.json`` (the FLARE23 authors' file): ``{"<case_id>": "1_2_3_..._14"}``;
  a value may also be a list of class indices or a space-separated string.  The file describes the
  whole FLARE23 training set, so entries for cases this import does not hold are skipped (counted
  in one INFO line); a key may carry an image suffix (``_0000.nii.gz``, ``.nii.gz``).
* overrides (``flareseg import --types FILE``, CSV ``case_id,annotated`` or the JSON above): only
  the listed cases; every other case keeps its manifest row or, without a manifest, the classes
  present in its label.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Mapping

from flareseg.data.sources import ImportConfigError
from flareseg.io import InputError
from flareseg.labels import MAX_LABEL, describe_type, label_type, type_to_str

log = logging.getLogger(__name__)

#: suffixes a key of the authors' type file may carry after the case id
KEY_SUFFIXES = ("_0000.nii.gz", ".nii.gz", "_0000.nii", ".nii", "_0000")


def _case_id(key: str, known: set[str] | None) -> str:
    key = key.strip()
    if known is None or key in known:
        return key
    for s in KEY_SUFFIXES:
        if key.endswith(s) and key[: -len(s)] in known:
            return key[: -len(s)]
    return key


def _classes(value, where: str) -> tuple[int, ...]:
    """A type file value (``"1_2_14"``, ``"1 2 14"`` or ``[1, 2, 14]``) -> label type."""
    if isinstance(value, str):
        tokens = value.replace("_", " ").replace(",", " ").split()
    elif isinstance(value, list):
        tokens = value
    else:
        raise ValueError(f"{where}: expected a string like '1_2_14' or a list of classes, got {value!r}")
    out = []
    for t in tokens:
        try:
            c = int(t)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: class {t!r} is not an integer") from None
        if not 0 <= c <= MAX_LABEL:
            raise ValueError(f"{where}: class {c} is not a FLARE23 class (0..{MAX_LABEL})")
        out.append(c)
    return label_type(out)


def read_type_file(path: Path, labeled_ids: set[str] | None = None) -> dict[str, tuple[int, ...]]:
    """The authors' JSON type file -> case -> label type, keeping the labeled cases of this import
    (all entries when ``labeled_ids`` is None).  Every bad entry is raised at once
    (ImportConfigError, ``FILE: case: reason``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist" if not path.exists() else "is not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read the type file ({e})") from None
    if not isinstance(data, dict):
        raise ImportConfigError([f"{path}: expected a JSON object {{case_id: '1_2_..._14'}}"])
    out: dict[str, tuple[int, ...]] = {}
    problems, skipped = [], 0
    for key, value in data.items():
        cid = _case_id(str(key), labeled_ids)
        try:
            t = _classes(value, f"{path}: case {key}")
        except ValueError as e:
            problems.append(str(e))
            continue
        if labeled_ids is not None and cid not in labeled_ids:
            skipped += 1
            continue
        if cid in out:
            problems.append(f"{path}: case {cid} is listed twice")
        out[cid] = t
    if problems:
        raise ImportConfigError(problems)
    if skipped:
        log.info("%s: %d entries for cases this import does not hold were skipped", path, skipped)
    return out


def read_types(path: Path, labeled_ids: set[str] | None = None,
               unlabeled_ids: Iterable[str] = ()) -> dict[str, tuple[int, ...]]:
    """A manifest or override file: the authors' JSON (``.json``) or the CSV ``case_id,annotated``."""
    if Path(path).suffix.lower() == ".json":
        return read_type_file(path, labeled_ids)
    from flareseg.data.sources import read_manifest
    return read_manifest(path, labeled_ids, unlabeled_ids)


def rare_threshold(n_cases: int) -> int:
    """A type is rare when it has at most this many cases: 2, or 1 % of the cases if more."""
    return max(2, n_cases // 100)


def type_table(types: Mapping[str, Iterable[int]], sources: Mapping[str, str] | None = None) -> list[str]:
    """Lines: the label types of the cases, most frequent first, with counts and words; rare types
    name their cases (up to 5); a first line says where the types came from (``sources``: case ->
    ``manifest`` / ``override`` / ``labels``)."""
    by_type: dict[str, list[str]] = {}
    for cid, t in sorted(types.items()):
        by_type.setdefault(type_to_str(t), []).append(cid)
    n = len(types)
    head = f"label types of {n} labeled case(s): {len(by_type)} distinct"
    if sources:
        counts: dict[str, int] = {}
        for s in sources.values():
            counts[s] = counts.get(s, 0) + 1
        head += " (from " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"
    lines = [head]
    rare = rare_threshold(n)
    for key, cases in sorted(by_type.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        t = tuple(int(c) for c in key.split("_")) if key != "none" else ()
        line = f"  {len(cases):>6}  {describe_type(t)}  [{key}]"
        if len(cases) <= rare:
            line += "  rare: " + ", ".join(cases[:5]) + (f" (+{len(cases) - 5})" if len(cases) > 5 else "")
        lines.append(line)
    return lines


def rare_types(types: Mapping[str, Iterable[int]]) -> dict[str, list[str]]:
    """Type string -> its cases, for the types with at most :func:`rare_threshold` cases."""
    by_type: dict[str, list[str]] = {}
    for cid, t in sorted(types.items()):
        by_type.setdefault(type_to_str(t), []).append(cid)
    limit = rare_threshold(len(types))
    return {k: v for k, v in sorted(by_type.items()) if len(v) <= limit}
