"""QC pictures: a gallery of CTOs and one of CutMix'ed samples (matplotlib Agg canvas without pyplot, PNG).

Each tile shows one axial slice of a ``(Z, Y, X)`` volume (or ``(1, Z, Y, X)``) in gray, windowed
to the slice's 1st-99th percentile; the tumor is outlined in red, other labels are overlaid in
colour on the CutMix gallery.  Files are written atomically.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flareseg.io import atomic_path
from flareseg.labels import TUMOR
from flareseg.overlay import add_legend, classes_in, overlay_rgb

log = logging.getLogger(__name__)

Tile = tuple[str, np.ndarray, np.ndarray]     # (title, image (Z, Y, X), label (Z, Y, X))


def tumor_slice(label: np.ndarray) -> int:
    """Axial index with the most tumor voxels (the first such); the middle slice without tumor.

    (The middle of the z-extent can fall between two tumors of one crop and show none.)"""
    counts = (label == TUMOR).reshape(label.shape[0], -1).sum(1)
    return int(counts.argmax()) if counts.any() else label.shape[0] // 2


def _squeeze(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    return arr[0] if arr.ndim == 4 else arr


def _save_grid(tiles: Sequence[Tile], dest: os.PathLike | str, columns: int, overlay: bool,
               tile_inches: float = 2.4) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(tiles))
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(tile_inches * cols, tile_inches * rows + 1.0))   # + title and legend rows
    FigureCanvasAgg(fig)            # Agg canvas, no pyplot global state
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    shown: set[int] = set()
    if not tiles:   # an empty panel says why
        axes[0, 0].text(0.5, 0.5, "no objects: the pool or sample list is empty", ha="center", va="center",
                        fontsize=8)
    for ax, (title, image, label) in zip(axes.ravel(), tiles):
        image, label = _squeeze(image), _squeeze(label)
        z = tumor_slice(label)
        sl_img = image[z].astype(np.float32)
        sl_lab = label[z]
        lo, hi = np.percentile(sl_img, [1, 99]) if sl_img.size else (0.0, 1.0)
        ax.imshow(sl_img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        if overlay:
            organs = np.where(sl_lab == TUMOR, 0, np.clip(sl_lab, 0, None))
            ax.imshow(overlay_rgb(sl_img, organs, level=(lo + hi) / 2, width=max(hi - lo, 1.0)),
                      interpolation="nearest")
            shown.update(classes_in(organs))
        if (sl_lab == TUMOR).any():
            ax.contour((sl_lab == TUMOR).astype(np.uint8), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{title}\nz={z}", fontsize=7)
    # the legend names every class shown; tumor is the red contour
    from matplotlib.lines import Line2D
    add_legend(fig, sorted(shown), extra=[Line2D([], [], color="red", lw=1, label="tumor (contour)")])
    fig.tight_layout(rect=(0, 0.7 / (tile_inches * rows + 1.0), 1, 1))
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    log.info("wrote %s (%d tiles)", dest, len(tiles))
    return dest


def cto_gallery(pool: Mapping[str, Any], dest: os.PathLike | str, ids: Sequence[str] | None = None,
                max_objects: int = 36, columns: int = 6) -> Path:
    """PNG of up to ``max_objects`` CTOs (``pool[id].image/.label``): tumor slice, tumor contour."""
    chosen = list(ids if ids is not None else pool)[:max_objects]
    tiles = []
    for i in chosen:
        obj = pool[i]
        tiles.append((str(i), obj.image, obj.label))
    return _save_grid(tiles, dest, columns, overlay=False)


def cutmix_gallery(samples: Sequence[Tile], dest: os.PathLike | str, columns: int = 4) -> Path:
    """PNG of CutMix'ed samples ``(title, image, label)``: image with label overlay and tumor contour."""
    return _save_grid(list(samples), dest, columns, overlay=True)
