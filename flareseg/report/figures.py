"""QC figures drawn for the report: label-type counts and validation overlays (matplotlib Agg,
pyplot-free Figure objects; PNGs written atomically)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from flareseg.io import atomic_path
from flareseg.labels import TUMOR, describe_type, label_type, str_to_type
from flareseg.overlay import add_legend, classes_in, overlay_rgb

#: HU window used for the CT background of overlays
SOFT_TISSUE_HU = (-160.0, 240.0)


def _save(fig, dest: os.PathLike | str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(dest)


def label_type_bar(types: Mapping[str, Iterable[int]], dest: os.PathLike | str) -> Path:
    """Horizontal bar chart: number of cases per label type (``{case: classes}`` in), most common on top."""
    from matplotlib.figure import Figure

    counts: dict[tuple[int, ...], int] = {}
    for t in types.values():
        key = label_type(str_to_type(t) if isinstance(t, str) else t)
        counts[key] = counts.get(key, 0) + 1
    order = sorted(counts, key=lambda k: (-counts[k], k))
    names = [describe_type(k) for k in order]
    names = [n if len(n) <= 60 else n[:57] + "..." for n in names]
    fig = Figure(figsize=(8, 0.8 + 0.35 * max(len(order), 1)))
    ax = fig.add_subplot(1, 1, 1)
    if order:
        ypos = np.arange(len(order))[::-1]
        colors = ["tab:red" if k == (TUMOR,) else "tab:blue" if TUMOR in k else "tab:gray" for k in order]
        ax.barh(ypos, [counts[k] for k in order], color=colors)
        ax.set_yticks(ypos, names, fontsize=8)
        for y, k in zip(ypos, order):
            ax.text(counts[k], y, f" {counts[k]}", va="center", fontsize=8)
        ax.set_xlim(0, max(counts.values()) * 1.15)
    else:
        ax.text(0.5, 0.5, "no cases: label_types.json lists none", ha="center", va="center",
                transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cases")
    ax.set_title(f"label types ({sum(counts.values())} cases; red: tumor only, blue: with tumor)", fontsize=9)
    fig.tight_layout()
    return _save(fig, dest)


def overlay_slice(label: np.ndarray) -> int:
    """Axial index through the middle of the foreground's z extent (middle slice when empty)."""
    fg = np.flatnonzero(label.reshape(label.shape[0], -1).max(axis=1) > 0)
    return int((fg.min() + fg.max()) // 2) if fg.size else label.shape[0] // 2


def validation_overlay(image: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                       dest: os.PathLike | str, title: str = "",
                       window: tuple[float, float] = SOFT_TISSUE_HU) -> Path:
    """Two panels on the reference's central axial slice: CT + prediction, CT + reference, with a
    legend naming every class shown (colours of :mod:`flareseg.overlay`); a panel without labels
    on that slice says so.  ``image`` in HU and both labels are ``(Z, Y, X)`` on the same grid.
    """
    from matplotlib.figure import Figure

    for name, arr in (("prediction", prediction), ("reference", reference)):
        if arr.shape != image.shape:
            raise ValueError(f"{name} grid {arr.shape} differs from the image grid {image.shape}")
    z = overlay_slice(reference)
    level, width = (window[0] + window[1]) / 2, window[1] - window[0]
    fig = Figure(figsize=(8, 4.8))
    for i, (name, lab) in enumerate((("prediction", prediction), ("reference", reference))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(overlay_rgb(image[z], lab[z], level=level, width=width), interpolation="nearest")
        ax.set_title(f"{name} (z={z})", fontsize=9)
        if not lab[z].any():   # an empty panel says why
            why = f"no {name} label on this slice" + ("" if lab.any() else f" (the {name} is empty)")
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=8,
                    color="white", bbox={"facecolor": "black", "alpha": 0.6})
        ax.axis("off")
    add_legend(fig, classes_in(prediction[z], reference[z]), ncol=5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return _save(fig, dest)
