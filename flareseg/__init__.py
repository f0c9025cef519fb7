"""flareseg: partially labeled abdominal organ + pan-cancer CT segmentation on nnU-Net v2.

``flareseg.predict``, ``flareseg.evaluate``, ``flareseg.clean`` and ``flareseg.statistics`` (see :mod:`flareseg.api`) are
imported on first use, so ``import flareseg`` stays light (no torch, no nnU-Net).

OpenMP: ``import flareseg`` sets ``OMP_WAIT_POLICY=PASSIVE`` when the environment does not set it
and torch is not imported yet, as the ``flareseg`` command does.  OpenMP threads that spin while
they wait make torch several times slower when other processes share the cores (the API ran
1.85x to 14x slower than the command before this); waiting passively costs nothing measurable on
a quiet machine (docs/benchmarks.md).  OpenMP reads the variable once, when torch loads: with
torch imported first it is left alone (the first ``flareseg.predict`` then logs an INFO line
saying so); set ``OMP_WAIT_POLICY`` yourself to choose.
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"

__all__ = ["predict", "evaluate", "clean", "statistics", "__version__"]

if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def __getattr__(name: str):
    if name in ("predict", "evaluate", "clean", "statistics"):
        from flareseg import api
        return getattr(api, name)
    raise AttributeError(f"module 'flareseg' has no attribute {name!r}")
