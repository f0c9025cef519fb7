"""Static check: no unused imports, undefined names or placeholder-less f-strings in the tree.

pyflakes found a real bug before it was part of the tests (an annotation naming ``np`` in a module
that never imported numpy); this keeps the whole tree clean instead of one run at a time."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pyflakes_reports_nothing():
    api = pytest.importorskip("pyflakes.api")
    from pyflakes.reporter import Reporter
    out, err = io.StringIO(), io.StringIO()
    paths = [str(REPO / d) for d in ("flareseg", "bench", "tests", "stages", "docker") if (REPO / d).is_dir()]
    count = api.checkRecursive(paths, Reporter(out, err))
    assert count == 0 and not err.getvalue(), out.getvalue() + err.getvalue()
