"""docs/pipeline.md documents every config key, with the code's defaults."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from flareseg.config import Config, to_dict

DOC = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"


def leaf_keys(d: dict, prefix: str = "") -> dict[str, object]:
    """Dotted config keys -> default (``evaluation.nsd_tolerance_mm`` is one key: a whole mapping)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "nsd_tolerance_mm":
            out.update(leaf_keys(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def documented() -> dict[str, str]:
    """Dotted key -> default cell, from the tables under '## Configuration keys'.

    A table belongs to the sections named in backticks in its '### ' heading (none: top level).
    """
    text = DOC.read_text().split("## Configuration keys", 1)[1].split("\n## ", 1)[0]
    out: dict[str, str] = {}
    sections = [""]
    for line in text.splitlines():
        if line.startswith("### "):
            sections = [s + "." for s in re.findall(r"`([^`]+)`", line)] or [""]
        m = re.match(r"\| `([a-z_]+)` \| (.*?) \|", line)
        if m:
            for s in sections:
                out[s + m.group(1)] = m.group(2).strip()
    return out


def test_every_config_key_is_documented_and_nothing_else():
    code, doc = leaf_keys(to_dict(Config())), documented()
    assert sorted(set(code) - set(doc)) == [], "config keys missing from docs/pipeline.md"
    assert sorted(set(doc) - set(code)) == [], "docs/pipeline.md documents keys the config lacks"


def test_documented_defaults_match_the_code():
    code, doc = leaf_keys(to_dict(Config())), documented()
    checked = 0
    for key, cell in doc.items():
        m = re.fullmatch(r"`([^`]*)`", cell)
        if m is None:           # e.g. "fine `[...]`, coarse `[...]`": checked below
            continue
        assert yaml.safe_load(m.group(1)) == code[key], f"{key}: docs say {cell}, code has {code[key]!r}"
        checked += 1
    assert checked > 90
    fine, coarse = re.findall(r"`(\[[^`]*\])`", doc["fine.spacing"])
    assert yaml.safe_load(fine) == code["fine.spacing"] and yaml.safe_load(coarse) == code["coarse.spacing"]
