"""Stage-2 report: ``uncertainty.csv``, the ranked selection table, histogram and overlay PNGs.

Plots use matplotlib's Agg backend (imported inside the functions, so importing this module stays
cheap and headless-safe).  All files are written atomically.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from flareseg.io import atomic_path, write_text
from flareseg.pseudolabel.selection import Selection
from flareseg.pseudolabel.uncertainty import GROUPS, SCORES, score_key

#: loads (image, label) ``(Z, Y, X)`` arrays of a case for the overlays
CaseLoader = Callable[[str], tuple[np.ndarray, np.ndarray]]


def _csv_text(header: Sequence[str], rows: Sequence[Mapping[str, object]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(header), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k, "")) for k in header})
    return buf.getvalue()


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def write_uncertainty_csv(scores: Mapping[str, Mapping[str, float]], dest: os.PathLike | str) -> Path:
    """All scores of all cases, one row per case (sorted by id); known columns first, NaN empty."""
    known = ["n_members"] + [score_key(g, s) for g in GROUPS for s in ("voxels", "members") + SCORES]
    seen = {k for s in scores.values() for k in s}
    cols = [k for k in known if k in seen] + sorted(seen - set(known))
    rows = [{"case_id": c, **scores[c]} for c in sorted(scores)]
    return write_text(_csv_text(["case_id"] + cols, rows), dest)


def write_selection_csv(selection: Sequence[Selection], dest: os.PathLike | str) -> Path:
    """Ranked table (organ rank order) with selection flags and label types."""
    rows = [s.row() for s in sorted(selection, key=lambda s: s.organ_rank)]
    header = list(rows[0]) if rows else list(Selection("", 0.0, 0.0, 0, None, False, False, ()).row())
    return write_text(_csv_text(header, rows), dest)


def _cut(kept: Sequence[Selection], tumor: bool) -> float | None:
    """Score of the last-ranked kept case (where the cut line goes), or None if none kept."""
    if not kept:
        return None
    last = max(kept, key=lambda s: (s.tumor_rank or 0) if tumor else s.organ_rank)
    return last.tumor_score if tumor else last.organ_score


def plot_histograms(selection: Sequence[Selection], dest: os.PathLike | str, score: str = "entropy",
                    bins: int = 30, tumor_score: str | None = None) -> Path:
    """Organ and tumor uncertainty histograms with the K1 (organ) and K2 (tumor) cut lines.

    The tumor panel shows the K1 selected cases (the ones ranked for tumor).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    organ = [s.organ_score for s in selection if s.organ_score is not None]
    tumor = [s.tumor_score for s in selection if s.selected and s.tumor_score is not None]
    k1 = [s for s in selection if s.selected]
    k2 = [s for s in selection if s.keep_tumor]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, vals, cut, name, cut_name, n_cut in (
            (axes[0], organ, _cut(k1, False), "organ", "K1", len(k1)),
            (axes[1], tumor, _cut(k2, True), "tumor", "K2", len(k2))):
        if vals:
            ax.hist(vals, bins=bins, color="tab:blue", alpha=0.8)
        else:   # an empty panel says why
            why = ("no organ score: no case was scored" if name == "organ" else
                   "no tumor score: no K1-selected case" if not k1 else
                   "no tumor score: no tumor predicted in the K1-selected cases")
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))   # counts of cases
        if cut is not None:
            ax.axvline(cut, color="tab:red", ls="--", label=f"{cut_name} cut ({n_cut} kept)")
            ax.legend(loc="upper right", fontsize=8)
        shown = (tumor_score or score) if cut_name == "K2" else score
        ax.set_xlabel(f"{name} {shown}" + (" (K1 selected cases)" if cut_name == "K2" else ""))
        ax.set_ylabel("cases")
    n_nan = sum(s.organ_score is None for s in selection)
    fig.suptitle(f"pseudo-label uncertainty ({len(selection)} cases"
                 + (f", {n_nan} without organ score" if n_nan else "") + ")")
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(dest)


def central_slice(label: np.ndarray) -> int:
    """Axial index through the centre of the label foreground (middle slice if empty)."""
    zs = np.flatnonzero(label.reshape(label.shape[0], -1).any(1))
    return int((zs[0] + zs[-1]) // 2) if zs.size else label.shape[0] // 2


def plot_overlay(image: np.ndarray, label: np.ndarray, dest: os.PathLike | str, title: str = "",
                 window: tuple[float, float] = (-160.0, 240.0)) -> Path:
    """PNG of the central axial slice of ``image`` (HU, ``(Z, Y, X)``) with ``label`` overlaid
    (colours of :mod:`flareseg.overlay`) and a legend naming the classes shown; an empty pseudo
    label says so on the picture."""
    from matplotlib.figure import Figure

    from flareseg.overlay import add_legend, classes_in, overlay_rgb

    if image.shape != label.shape:
        raise ValueError(f"image {image.shape} and label {label.shape} grids differ")
    z = central_slice(label)
    fig = Figure(figsize=(4, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(overlay_rgb(image[z], label[z], level=(window[0] + window[1]) / 2, width=window[1] - window[0]),
              interpolation="nearest")
    if not label.any():
        ax.text(0.5, 0.5, "empty pseudo label: the model predicted no foreground", ha="center", va="center",
                transform=ax.transAxes, fontsize=7, color="white", bbox={"facecolor": "black", "alpha": 0.6})
    ax.set_title(f"{title} (z={z})", fontsize=9)
    ax.axis("off")
    add_legend(fig, classes_in(label[z]), ncol=3)
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return Path(dest)


def write_report(out_dir: os.PathLike | str, scores: Mapping[str, Mapping[str, float]],
                 selection: Sequence[Selection], score: str = "entropy",
                 load_case: CaseLoader | None = None, n_examples: int = 3,
                 tumor_score: str | None = None) -> list[Path]:
    """Write ``uncertainty.csv``, ``selection.csv``, ``uncertainty_hist.png`` and, with
    ``load_case``, overlays of the ``n_examples`` most and least organ-confident cases
    (``overlays/{most,least}_<rank>_<case>.png``).  Returns the written paths."""
    out = Path(out_dir)
    paths = [write_uncertainty_csv(scores, out / "uncertainty.csv"),
             write_selection_csv(selection, out / "selection.csv"),
             plot_histograms(selection, out / "uncertainty_hist.png", score, tumor_score=tumor_score)]
    if load_case is not None and n_examples > 0:
        ranked = [s for s in sorted(selection, key=lambda s: s.organ_rank) if s.organ_score is not None]
        most = ranked[:n_examples]
        least = [s for s in ranked[::-1][:n_examples] if s not in most]
        for tag, group in (("most", most), ("least", least)):
            for s in group:
                image, label = load_case(s.case_id)
                paths.append(plot_overlay(
                    image, label, out / "overlays" / f"{tag}_{s.organ_rank:04d}_{s.case_id}.png",
                    f"{s.case_id}: organ {score} {s.organ_score:.3g} (rank {s.organ_rank})"))
    return paths
