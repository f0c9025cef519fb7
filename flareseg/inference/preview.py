"""Preview PNG of a predicted case: a few axial slices and one coronal slice of the CT (windowed)
with the label overlay and a colour legend of the classes shown, as TotalSegmentator users expect."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from flareseg.io import atomic_path
from flareseg.overlay import ALPHA, WINDOW_HU, add_legend, classes_in, overlay_rgb

AXIAL_SLICES = 3
PANEL_INCHES, DPI = 3.0, 100     # each panel 300 x 300 pixels


def preview_slices(labels: np.ndarray, n_axial: int = AXIAL_SLICES) -> tuple[list[int], int]:
    """``(axial z indices, coronal y index)`` for a ``(Z, Y, X)`` label map: axial slices evenly
    inside the foreground's z range (the whole volume when there is none), the coronal slice
    through the foreground's centre row."""
    fg = np.nonzero(labels)
    if fg[0].size:
        z0, z1 = int(fg[0].min()), int(fg[0].max())
        y = int(round(float(np.median(fg[1]))))
    else:
        z0, z1, y = 0, labels.shape[0] - 1, labels.shape[1] // 2
    zs = np.linspace(z0, z1, n_axial + 2)[1:-1] if z1 > z0 else np.full(n_axial, z0)
    return sorted({int(round(z)) for z in zs}), y


def display_flips(direction: Sequence[float] | None) -> tuple[bool, bool, bool]:
    """Which array axes ``(Z, Y, X)`` to reverse so slices show in radiological convention
    (anterior up, the patient's right on the image's left, superior up in the coronal view),
    from an ITK direction matrix (9 values, row-major, LPS): the sign of each index axis'
    diagonal entry (axial storage; a permuted or oblique matrix is read by its diagonal too).
    ``None``: the identity matrix."""
    d = np.asarray(direction if direction is not None else np.eye(3).ravel(), dtype=float).reshape(3, 3)
    # x index should run toward +L, y index toward +P (downwards), z index toward +S (drawn upwards)
    return bool(d[2, 2] > 0), bool(d[1, 1] < 0), bool(d[0, 0] < 0)


def write_preview(ct: np.ndarray, labels: np.ndarray, spacing_zyx: Sequence[float],
                  names: Mapping[int, str], dest: str | os.PathLike, title: str = "",
                  direction: Sequence[float] | None = None) -> None:
    """Write the preview PNG of a ``(Z, Y, X)`` CT (HU) and its label map to ``dest`` (atomically):
    :data:`AXIAL_SLICES` axial panels and one coronal panel (shown at its physical aspect ratio)
    in radiological orientation (:func:`display_flips` of the image's ITK ``direction``), a
    legend naming every class present (``names``: index -> class name).  The figure is
    ``(AXIAL_SLICES + 1) * 300`` x 300 pixels plus a legend row."""
    from matplotlib.figure import Figure   # no pyplot: Agg renders it, the user's backend is untouched

    zs, y = preview_slices(labels)      # indices of the stored array (the panel titles name them)
    fz, fy, fx = display_flips(direction)
    flips = tuple(slice(None, None, -1 if f else None) for f in (fz, fy, fx))
    ct, labels = ct[flips], labels[flips]
    nz, ny = labels.shape[:2]
    panels = [(f"axial z={z}", ct[nz - 1 - z if fz else z], labels[nz - 1 - z if fz else z],
               spacing_zyx[1] / spacing_zyx[2]) for z in (reversed(zs) if fz else zs)]
    yd = ny - 1 - y if fy else y
    panels.append((f"coronal y={y}", ct[:, yd], labels[:, yd], spacing_zyx[0] / spacing_zyx[2]))
    fig = Figure(figsize=(PANEL_INCHES * (AXIAL_SLICES + 1), PANEL_INCHES + 1.0), dpi=DPI)
    for i, (label, img, lab, aspect) in enumerate(panels):
        ax = fig.add_axes((i / (AXIAL_SLICES + 1), 1.0 / (PANEL_INCHES + 1.0), 1 / (AXIAL_SLICES + 1),
                           PANEL_INCHES / (PANEL_INCHES + 1.0) - 0.14))
        ax.imshow(overlay_rgb(img, lab), interpolation="nearest", aspect=aspect)
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    present = classes_in(labels)
    if present:
        add_legend(fig, present, names)
    else:
        fig.text(0.5, 0.4 / (PANEL_INCHES + 1.0), "no foreground class predicted", ha="center", fontsize=8)
    fig.suptitle(f"{title}  (CT W{WINDOW_HU[1]:g}/L{WINDOW_HU[0]:g}, overlay alpha {ALPHA})", fontsize=9)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
