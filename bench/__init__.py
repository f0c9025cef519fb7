"""Benchmarks; run from the repository root as modules, ``python -m bench.NAME ...`` (see
docs/benchmarks.md), so ``flareseg`` and ``bench`` import without path edits."""
