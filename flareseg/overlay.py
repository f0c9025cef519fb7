"""Label overlays on CT slices, one look everywhere (predict --preview, the QC page, pseudo-label
and CutMix pictures): a fixed colour per class, the windowed CT, and a legend naming the classes
shown.  numpy only; matplotlib is imported by :func:`add_legend` alone."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from flareseg.labels import CLASS_NAMES, TUMOR

#: RGB in [0, 1] per FLARE23 class index (background has none); other indices cycle through it
CLASS_COLOURS: dict[int, tuple[float, float, float]] = {
    1: (0.85, 0.55, 0.35), 2: (0.10, 0.60, 0.95), 3: (0.20, 0.80, 0.20), 4: (0.75, 0.75, 0.00),
    5: (0.95, 0.20, 0.80), 6: (0.40, 0.20, 0.90), 7: (1.00, 0.55, 0.00), 8: (0.00, 0.85, 0.85),
    9: (0.55, 0.85, 0.30), 10: (0.55, 0.30, 0.10), 11: (0.95, 0.60, 0.70), 12: (0.50, 0.50, 1.00),
    13: (0.00, 0.45, 0.30), TUMOR: (1.00, 1.00, 0.00),
}
ALPHA = 0.5                      # overlay opacity
WINDOW_HU = (40.0, 400.0)        # level, width (soft tissue, W400/L40)


def colour_of(label: int) -> tuple[float, float, float]:
    """The overlay colour of class ``label`` (> 0)."""
    return CLASS_COLOURS.get(label) or CLASS_COLOURS[(label - 1) % len(CLASS_COLOURS) + 1]


def window(ct: np.ndarray, level: float = WINDOW_HU[0], width: float = WINDOW_HU[1]) -> np.ndarray:
    """HU -> grey in [0, 1] for the window ``level``/``width`` (W400/L40 by default)."""
    return np.clip((np.asarray(ct, dtype=np.float64) - (level - width / 2)) / width, 0.0, 1.0)


def overlay_rgb(ct: np.ndarray, labels: np.ndarray, alpha: float = ALPHA,
                level: float = WINDOW_HU[0], width: float = WINDOW_HU[1]) -> np.ndarray:
    """``(H, W, 3)`` RGB in [0, 1] of a 2-D CT slice (HU) with the label slice blended in:
    ``alpha * colour + (1 - alpha) * grey`` where a class is, the windowed grey elsewhere."""
    grey = window(ct, level, width)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for lab in np.unique(labels):
        if lab == 0:
            continue
        m = labels == lab
        rgb[m] = alpha * np.asarray(colour_of(int(lab))) + (1 - alpha) * rgb[m]
    return rgb


def classes_in(*labels: np.ndarray) -> list[int]:
    """The foreground classes present in any of ``labels``, ascending."""
    return sorted({int(c) for lab in labels for c in np.unique(lab) if c != 0})


def format_ml(ml: float) -> str:
    """A volume for a legend: ``"1523 mL"``, ``"4.2 mL"`` under 10 mL, ``"0.03 mL"`` under 0.1 mL."""
    return f"{ml:.0f} mL" if ml >= 10 else f"{ml:.1f} mL" if ml >= 0.1 else f"{ml:.2g} mL"


def add_legend(target: Any, classes: Iterable[int], names: Mapping[int, str] = CLASS_NAMES,
               loc: str = "lower center", ncol: int = 7, extra: Iterable[Any] = (),
               volumes_ml: Mapping[int, float] | None = None, **kw: Any) -> Any:
    """A legend on the matplotlib figure or axes ``target``: one coloured patch per class, named
    from ``names`` (with its volume when ``volumes_ml`` holds it: ``liver  1523 mL``), then the
    ``extra`` handles (e.g. a contour's line); "no foreground label" as its title when there is
    nothing to name."""
    from matplotlib.patches import Patch
    vols = volumes_ml or {}

    def label(c: int) -> str:
        name = names.get(c, str(c))
        return f"{name}  {format_ml(vols[c])}" if c in vols else name
    handles = [Patch(facecolor=colour_of(c), edgecolor="black", label=label(c)) for c in classes]
    handles += list(extra)
    return target.legend(handles=handles, loc=loc, ncol=max(1, min(len(handles), ncol)), fontsize=7,
                         frameon=False, title=None if handles else "no foreground label", **kw)
