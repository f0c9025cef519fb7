"""Python and package versions, as recorded in stage manifests and ``predict_report.json``.

A ground-floor helper: read from installed distribution metadata, so nothing is imported for it.
"""
from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

#: module name -> installed distribution (package) name, for the versions recorded in manifests
DISTRIBUTIONS = {"flareseg": "flareseg", "torch": "torch", "nnunetv2": "nnunetv2", "numpy": "numpy",
                 "SimpleITK": "SimpleITK", "cc3d": "connected-components-3d"}


def versions() -> dict[str, str]:
    """Python and package versions (installed distribution metadata, no imports)."""
    out = {"python": platform.python_version()}
    for mod, dist in DISTRIBUTIONS.items():
        try:
            out[mod] = version(dist)
        except PackageNotFoundError:
            out[mod] = "not installed"
    if "torch" in sys.modules:  # carries the build tag (e.g. +cu130, +cpu)
        out["torch"] = sys.modules["torch"].__version__
    return out
