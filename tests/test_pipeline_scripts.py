"""The per-stage scripts ``stages/stage_N.py`` say what their stage does: each docstring is the
stage's description from the registry (names and descriptions are written only there), and
``--help`` lists the same descriptions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from flareseg.pipeline.__main__ import HELP
from flareseg.pipeline.registry import DESCRIPTIONS, STAGES
from flareseg.work_layout import STAGE_NAMES

SCRIPTS = Path(__file__).resolve().parents[1] / "stages"


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("n", sorted(STAGES))
def test_stage_script_docstring_is_the_registry_description(n):
    doc = ast.get_docstring(ast.parse((SCRIPTS / f"stage_{n}.py").read_text()))
    assert doc is not None and doc.startswith(f"stage-{n} ({STAGE_NAMES[n]}): ")
    assert _words(doc) == _words(f"stage-{n} ({STAGE_NAMES[n]}): {DESCRIPTIONS[n]}")


def test_one_script_per_registered_stage_and_no_stray_ones():
    assert sorted(p.name for p in SCRIPTS.glob("stage_*.py")) == [f"stage_{n}.py" for n in sorted(STAGES)]


def test_help_lists_every_stage_with_its_description():
    assert set(DESCRIPTIONS) == set(STAGES) == set(STAGE_NAMES)
    words = _words(HELP)
    for n, name in STAGE_NAMES.items():
        assert _words(f"{n} {name} {DESCRIPTIONS[n]}") in words
