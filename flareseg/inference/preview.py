"""Preview PNG of a predicted case, as TotalSegmentator users expect: axial slices and a coronal
and a sagittal slice of the CT (windowed) with the label overlay, and a legend naming each class
shown with its volume (mL, over the whole label map).

Every panel is drawn at its physical size (mm, from the voxel spacing) and the panels tile the
figure (:func:`preview_layout`), so no cell is left empty: usually a row of :data:`AXIAL_SLICES`
axial panels of :data:`PANEL_INCHES` with the coronal and sagittal panels side by side below it at
one scale spanning the same width.  A short scan (a few centimetres along z) would make that row a
strip: it is stretched along z to :data:`MIN_SIDE_INCHES` and the panel titles say by how much.  A
scan taller than :data:`MAX_SIDE_INCHES` at that width (chest to pelvis, whole body) puts the axial
panels in a column on the left and the coronal and sagittal panels beside it at the column's
height."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from flareseg.inference.statistics import label_statistics
from flareseg.io import atomic_path, strip_suffix
from flareseg.overlay import ALPHA, WINDOW_HU, add_legend, classes_in, overlay_rgb

AXIAL_SLICES = 3
PANEL_INCHES, DPI = 3.0, 100     # each axial panel fits 300 x 300 pixels
MIN_SIDE_INCHES = 1.6            # least height of the coronal/sagittal row (short scans stretched along z)
MAX_SIDE_INCHES = 7.0            # taller at full width: axial panels in a column, the others beside it
GAP_INCHES = 0.1                 # between the coronal and the sagittal panel
TITLE_INCHES, PANEL_TITLE_INCHES = 0.35, 0.22
LEGEND_COLUMNS, LEGEND_ROW_INCHES = 4, 0.2


@dataclass(frozen=True)
class Box:
    """A panel's place in inches from the figure's top-left corner."""
    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class Layout:
    """Figure size (inches), the axial, coronal and sagittal panels, the z stretch of the last two
    (1 = physical scale), and where the legend starts (inches from the top)."""
    width: float
    height: float
    axial: list[Box]
    coronal: Box
    sagittal: Box
    stretch: float
    legend_top: float


def preview_path(label_map: str | os.PathLike) -> Path:
    """The preview PNG of a label map: ``seg.nii.gz`` -> ``seg_preview.png`` next to it (named
    after the output, so ``-o seg.nii.gz`` gives ``seg_preview.png`` whatever the input's name)."""
    p = Path(label_map)
    return p.parent / f"{strip_suffix(p.name)}_preview.png"


def preview_slices(labels: np.ndarray, n_axial: int = AXIAL_SLICES) -> tuple[list[int], int, int]:
    """``(axial z indices, coronal y index, sagittal x index)`` for a ``(Z, Y, X)`` label map:
    ``n_axial`` distinct axial slices evenly inside the foreground's z range (the whole volume when
    there is none; a range of fewer slices is widened around its centre, so the row has no empty
    cell unless the volume itself has fewer slices), the coronal and sagittal slices through the
    foreground's median row and column (the centre without foreground)."""
    nz = labels.shape[0]
    fg = np.nonzero(labels)
    if fg[0].size:
        z0, z1 = int(fg[0].min()), int(fg[0].max())
        y = int(round(float(np.median(fg[1]))))
        x = int(round(float(np.median(fg[2]))))
    else:
        z0, z1, y, x = 0, nz - 1, labels.shape[1] // 2, labels.shape[2] // 2
    zs = [int(round(z)) for z in np.linspace(z0, z1, n_axial + 2)[1:-1]]
    if len(set(zs)) < n_axial:                  # a thin range: n consecutive slices around its centre
        k = min(n_axial, nz)
        start = min(max(0, (z0 + z1) // 2 - (k - 1) // 2), nz - k)
        zs = list(range(start, start + k))
    return sorted(set(zs)), y, x


def class_volumes_ml(labels: np.ndarray, spacing_zyx: Sequence[float], classes: Sequence[int],
                     names: Mapping[int, str]) -> dict[int, float]:
    """Volume (mL) of each of ``classes`` in the ``(Z, Y, X)`` label map (the statistics' count)."""
    named = {c: f"{names.get(c, c)}#{c}" for c in classes}   # unique keys even if names repeat
    vols = label_statistics(labels, spacing_zyx, named, tumor_label=None)["volumes_ml"] if classes else {}
    return {c: vols[n] for c, n in named.items()}


def preview_layout(shape_zyx: Sequence[int], spacing_zyx: Sequence[float], n_axial: int = AXIAL_SLICES,
                   legend_rows: int = 1) -> Layout:
    """Where each panel of a ``(Z, Y, X)`` volume's preview goes (module docstring): axial panels
    of the slice's physical box fitted into :data:`PANEL_INCHES`; coronal (x by z mm) and sagittal
    (y by z mm) panels at one physical scale, side by side."""
    ez, ey, ex = (float(n) * float(s) for n, s in zip(shape_zyx, spacing_zyx))
    n = max(1, n_axial)
    fit = PANEL_INCHES / max(ex, ey)
    ax_w, ax_h = ex * fit, ey * fit
    top = TITLE_INCHES + PANEL_TITLE_INCHES
    width = n * PANEL_INCHES
    row_h = ez * (width - GAP_INCHES) / (ex + ey)        # the side row at full width, physical scale
    if row_h <= MAX_SIDE_INCHES:                         # axial row, side row below it
        axial = [Box(i * PANEL_INCHES + (PANEL_INCHES - ax_w) / 2, top, ax_w, ax_h) for i in range(n)]
        stretch = max(1.0, MIN_SIDE_INCHES / row_h)
        h, scale = row_h * stretch, (width - GAP_INCHES) / (ex + ey)
        side_top, side_left = top + ax_h + PANEL_TITLE_INCHES, 0.0
    else:                                                # axial column, side panels beside it
        axial = [Box((PANEL_INCHES - ax_w) / 2, top + i * (ax_h + PANEL_TITLE_INCHES), ax_w, ax_h)
                 for i in range(n)]
        h = n * ax_h + (n - 1) * PANEL_TITLE_INCHES
        scale, stretch = h / ez, 1.0
        side_top, side_left = top, PANEL_INCHES + GAP_INCHES
        width = side_left + (ex + ey) * scale + GAP_INCHES
    coronal = Box(side_left, side_top, ex * scale, h)
    sagittal = Box(side_left + ex * scale + GAP_INCHES, side_top, ey * scale, h)
    bottom = max(side_top + h, axial[-1].top + ax_h) + 0.05
    height = bottom + 0.15 + LEGEND_ROW_INCHES * max(1, legend_rows)
    return Layout(width, height, axial, coronal, sagittal, stretch, bottom)


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
    :data:`AXIAL_SLICES` axial panels, then a coronal and a sagittal panel (physical sizes, see
    the module docstring), in radiological orientation (:func:`display_flips` of the image's ITK
    ``direction``), and a legend naming every class present (``names``: index -> class name) with
    its volume in mL.  The figure's size follows :func:`preview_layout` (900 pixels wide for a usual
    abdominal scan)."""
    from matplotlib.figure import Figure   # no pyplot: Agg renders it, the user's backend is untouched

    zs, y, x = preview_slices(labels)   # indices of the stored array (the panel titles name them)
    present = classes_in(labels)
    volumes = class_volumes_ml(labels, spacing_zyx, present, names)
    fz, fy, fx = display_flips(direction)
    flips = tuple(slice(None, None, -1 if f else None) for f in (fz, fy, fx))
    ct, labels = ct[flips], labels[flips]
    nz, ny, nx = labels.shape
    lay = preview_layout(labels.shape, spacing_zyx, len(zs), math.ceil(len(present) / LEGEND_COLUMNS))
    fig = Figure(figsize=(lay.width, lay.height), dpi=DPI)

    def panel(box: Box, name: str, img: np.ndarray, lab: np.ndarray) -> None:
        ax = fig.add_axes((box.left / lay.width, 1 - (box.top + box.height) / lay.height,
                           box.width / lay.width, box.height / lay.height))
        ax.imshow(overlay_rgb(img, lab), interpolation="nearest", aspect="auto")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()

    for box, z in zip(lay.axial, reversed(zs) if fz else zs):   # superior first
        zd = nz - 1 - z if fz else z
        panel(box, f"axial z={z}", ct[zd], labels[zd])
    note = f", z stretched x{lay.stretch:.1f}" if lay.stretch > 1.05 else ""
    yd, xd = (ny - 1 - y if fy else y), (nx - 1 - x if fx else x)
    panel(lay.coronal, f"coronal y={y}{note}", ct[:, yd], labels[:, yd])
    panel(lay.sagittal, f"sagittal x={x}{note}", ct[:, :, xd], labels[:, :, xd])
    legend_top = 1 - lay.legend_top / lay.height
    if present:
        add_legend(fig, present, names, loc="upper center", ncol=LEGEND_COLUMNS, volumes_ml=volumes,
                   bbox_to_anchor=(0.5, legend_top))
    else:
        fig.text(0.5, legend_top, "no foreground class predicted", ha="center", va="top", fontsize=8)
    fig.suptitle(f"{title}  (CT W{WINDOW_HU[1]:g}/L{WINDOW_HU[0]:g}, overlay alpha {ALPHA})", fontsize=9,
                 y=1 - 0.08 / lay.height, va="top")
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
