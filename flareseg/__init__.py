"""flareseg: partially labeled abdominal organ + pan-cancer CT segmentation on nnU-Net v2.

``flareseg.predict``, ``flareseg.evaluate``, ``flareseg.clean`` and ``flareseg.statistics`` (see :mod:`flareseg.api`) are
imported on first use, so ``import flareseg`` stays light (no torch, no nnU-Net)."""
__version__ = "0.1.0"

__all__ = ["predict", "evaluate", "clean", "statistics", "__version__"]


def __getattr__(name: str):
    if name in ("predict", "evaluate", "clean", "statistics"):
        from flareseg import api
        return getattr(api, name)
    raise AttributeError(f"module 'flareseg' has no attribute {name!r}")
