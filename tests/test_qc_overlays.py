"""QC pictures and page (issue 19): every overlay names its classes in a legend, counts are
integers, an empty panel says why, and a red note when pseudo-label selection does worse than
rejection on cases with known truth."""
from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from flareseg.overlay import colour_of
from flareseg.work_layout import stage_dir
from flareseg.report import build_qc_report
from flareseg.report.figures import label_type_bar, validation_overlay
from flareseg.report.sections import selection_warning
from tests.test_qc_report import make_work


@pytest.fixture
def saved(monkeypatch):
    """The matplotlib figures saved during a test (their legends and texts are what a user sees)."""
    figs: list[Figure] = []
    original = Figure.savefig

    def record(self, *a, **kw):
        figs.append(self)
        return original(self, *a, **kw)
    monkeypatch.setattr(Figure, "savefig", record)
    return figs


def _legend(fig: Figure) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _labels():
    ref = np.zeros((6, 16, 16), np.uint8)
    ref[2:4, 4:10, 4:10] = 1
    ref[2:4, 11:13, 11:13] = 14          # on the central slice z=2 too: both classes shown
    return np.full(ref.shape, 40, np.int16), ref


def test_validation_overlay_legend_names_classes_and_empty_panel_says_why(tmp_path, saved):
    image, ref = _labels()
    validation_overlay(image, ref, ref, tmp_path / "ok.png")
    assert _legend(saved[-1]) == ["liver", "tumor"]
    px = __import__("matplotlib.image").image.imread(str(tmp_path / "ok.png"))[..., :3]
    want = 0.5 * np.asarray(colour_of(1)) + 0.25            # liver over grey 0.5 (HU 40 in W400/L40)
    assert (np.abs(px - want).max(-1) < 2.5 / 255).sum() > 100
    validation_overlay(image, np.zeros_like(ref), ref, tmp_path / "empty.png")
    assert _legend(saved[-1]) == ["liver", "tumor"]
    assert "no prediction label on this slice (the prediction is empty)" in _texts(saved[-1])


def test_pseudo_label_overlay_and_histograms(tmp_path, saved):
    from flareseg.pseudolabel.report import plot_histograms, plot_overlay
    from flareseg.pseudolabel.selection import Selection
    image, ref = _labels()
    plot_overlay(image, ref, tmp_path / "o.png", "U1")
    assert _legend(saved[-1]) == ["liver", "tumor"]
    plot_overlay(image, np.zeros_like(ref), tmp_path / "e.png", "U2")
    assert "empty pseudo label: the model predicted no foreground" in _texts(saved[-1])
    sel = [Selection(f"U{i}", 0.1 * i, None, i, None, i <= 2, False, ()) for i in range(1, 6)]
    plot_histograms(sel, tmp_path / "h.png")
    fig = saved[-1]
    assert "no tumor score: no tumor predicted in the K1-selected cases" in _texts(fig)
    ticks = fig.axes[0].get_yticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)          # case counts


def test_cutmix_gallery_legend_and_empty_gallery(tmp_path, saved):
    from flareseg.cto.gallery import cutmix_gallery
    image, ref = _labels()
    cutmix_gallery([("s0", image, ref)], tmp_path / "g.png")
    assert _legend(saved[-1]) == ["liver", "tumor (contour)"]
    cutmix_gallery([], tmp_path / "none.png")
    assert "no objects: the pool or sample list is empty" in _texts(saved[-1])


def test_label_type_counts_are_integers(tmp_path, saved):
    label_type_bar({"a": [1, 14], "b": [14], "c": [1, 14]}, tmp_path / "t.png")
    ax = saved[-1].axes[0]
    assert sorted(t.get_text().strip() for t in ax.texts) == ["1", "2"]
    assert all(float(t).is_integer() for t in ax.get_xticks())
    label_type_bar({}, tmp_path / "none.png")
    assert "no cases: label_types.json lists none" in _texts(saved[-1])


@pytest.mark.parametrize("quality, note", [
    ({"cases": 6, "mean_organ_dice_selected": 0.52, "mean_organ_dice_rejected": 0.71}, True),
    ({"cases": 6, "mean_organ_dice_selected": 0.71, "mean_organ_dice_rejected": 0.52}, False),
    ({"cases": 6, "mean_organ_dice_selected": 0.7, "mean_organ_dice_rejected": 0.7}, False),
    ({"cases": 2, "mean_organ_dice_selected": 0.8}, False),     # nothing rejected with truth
])
def test_red_note_when_selection_worse_than_rejection(tmp_path, quality, note):
    work = make_work(tmp_path / "w", stages=(1, 2))
    (stage_dir(work, 2) / "report" / "pseudo_label_quality.json").write_text(json.dumps(quality))
    text = build_qc_report(work).read_text()
    red = '<p class="error">pseudo-label selection does worse than rejection: the selected cases&#x27; ' \
          'mean organ Dice 0.520 is below the rejected cases&#x27; 0.710 (on 6 cases with known truth)'
    assert (red in text) is note
    assert (selection_warning(quality) is not None) is note
