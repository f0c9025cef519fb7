"""The --preview picture (issue 27 item 6): no empty cell, coronal/sagittal panels at physical
size and a readable height, each class's volume (mL) in the legend, named after the output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flareseg.labels import CLASS_NAMES
from flareseg.inference import preview
from flareseg.inference.preview import (DPI, GAP_INCHES, MAX_SIDE_INCHES, MIN_SIDE_INCHES, PANEL_INCHES,
                                        PANEL_TITLE_INCHES, class_volumes_ml, preview_layout, preview_path,
                                        write_preview)
from flareseg.overlay import add_legend, format_ml


def test_preview_is_named_after_the_label_map():
    assert preview_path("out/seg.nii.gz") == Path("out/seg_preview.png")
    assert preview_path(Path("out") / "case_7.nii.gz") == Path("out/case_7_preview.png")
    assert preview_path("a/b.mha") == Path("a/b_preview.png")


def _filled(lay) -> float:
    """Share of the panel region (first panel top to last panel bottom, full width) the panels
    and their title strips cover."""
    boxes = [*lay.axial, lay.coronal, lay.sagittal]
    top = min(b.top for b in boxes) - PANEL_TITLE_INCHES
    bottom = max(b.top + b.height for b in boxes)
    covered = sum(b.width * (b.height + PANEL_TITLE_INCHES) for b in boxes)
    return covered / (lay.width * (bottom - top))


@pytest.mark.parametrize("shape, spacing, stretched, column", [
    ((300, 512, 512), (1.0, 0.8, 0.8), False, False),    # a usual abdomen: physical scale
    ((20, 512, 512), (2.0, 0.98, 0.98), True, False),    # 4 cm of z (the shared DICOM series)
    ((6, 60, 60), (2.0, 1.0, 1.0), True, False),
    ((900, 512, 512), (2.0, 1.0, 1.0), False, True),     # whole body: axial column, side panels beside
    ((60, 40, 40), (2.5, 1.0, 1.0), False, True),
])
def test_layout_has_no_empty_cell_and_keeps_physical_scale(shape, spacing, stretched, column):
    lay = preview_layout(shape, spacing)
    ez, ey, ex = (n * s for n, s in zip(shape, spacing))
    assert _filled(lay) > 0.9
    cor, sag = lay.coronal, lay.sagittal
    assert cor.height == sag.height and cor.width / sag.width == pytest.approx(ex / ey)
    assert cor.height / cor.width == pytest.approx(lay.stretch * ez / ex)
    assert (lay.stretch > 1) == stretched and cor.height >= MIN_SIDE_INCHES - 1e-9
    if stretched:
        assert cor.height == pytest.approx(MIN_SIDE_INCHES)
    assert (lay.axial[1].left == lay.axial[0].left) == column      # a column: the same left edge
    if not column:
        assert lay.width == 3 * PANEL_INCHES and cor.width + GAP_INCHES + sag.width == pytest.approx(lay.width)
        assert cor.height <= MAX_SIDE_INCHES


def test_class_volumes_ml_count_voxels_times_spacing():
    lab = np.zeros((4, 5, 6), dtype=np.uint8)
    lab[0, :2, :3] = 1          # 6 voxels
    lab[1:3, 0, 0] = 14         # 2 voxels
    vols = class_volumes_ml(lab, (2.0, 1.5, 1.0), [1, 14], CLASS_NAMES)
    assert vols == {1: pytest.approx(6 * 3.0 / 1000), 14: pytest.approx(2 * 3.0 / 1000)}


def test_legend_names_each_class_with_its_volume():
    from matplotlib.figure import Figure
    leg = add_legend(Figure(), [1, 14], CLASS_NAMES, volumes_ml={1: 1523.4, 14: 4.25})
    assert [t.get_text() for t in leg.get_texts()] == ["liver  1523 mL", "tumor  4.2 mL"]
    assert format_ml(0.031) == "0.031 mL"


def _white(px: np.ndarray) -> np.ndarray:
    return (px > 0.97).all(-1)


@pytest.mark.parametrize("shape, spacing", [((6, 60, 60), (2.0, 1.0, 1.0)),      # 12 mm of z
                                            ((40, 40, 40), (2.5, 1.0, 1.0))])   # taller than wide
def test_preview_fills_the_picture_and_shows_volumes(tmp_path, monkeypatch, shape, spacing):
    import matplotlib.image
    ct = np.full(shape, 40, dtype=np.int16)
    ct[:, :, : shape[2] // 2] = -1000                     # black on one side: no panel is all one grey
    lab = np.zeros(shape, dtype=np.uint8)
    lab[1:-1, 10:30, 10:30] = 1
    lab[2:4, 32:36, 32:36] = 14
    seen = {}
    real = preview.add_legend

    def spy(*a, **kw):
        seen.update(kw.get("volumes_ml") or {})
        return real(*a, **kw)
    monkeypatch.setattr(preview, "add_legend", spy)
    dest = tmp_path / "c_preview.png"
    write_preview(ct, lab, spacing, CLASS_NAMES, dest, title="c")
    voxel_ml = float(np.prod(spacing)) / 1000
    assert seen == {1: pytest.approx((lab == 1).sum() * voxel_ml), 14: pytest.approx((lab == 14).sum() * voxel_ml)}
    px = matplotlib.image.imread(str(dest))[..., :3]
    lay = preview_layout(shape, spacing)
    assert np.allclose(px.shape[:2], (lay.height * DPI, lay.width * DPI), atol=1)
    # the panel region, quarter by quarter, is painted (no empty quadrant)
    top = round((lay.axial[0].top - PANEL_TITLE_INCHES) * DPI)
    bottom = round((lay.coronal.top + lay.coronal.height) * DPI)
    mid_r, mid_c, w = (top + bottom) // 2, px.shape[1] // 2, px.shape[1]
    for r0, r1 in ((top, mid_r), (mid_r, bottom)):
        for c0, c1 in ((0, mid_c), (mid_c, w)):
            assert (~_white(px[r0:r1, c0:c1])).mean() > 0.6, (r0, r1, c0, c1)
    # the coronal panel is drawn at least MIN_SIDE_INCHES tall, however short the scan
    col = round((lay.coronal.left + lay.coronal.width / 2) * DPI)
    cor_top = round(lay.coronal.top * DPI)
    assert bottom - cor_top >= MIN_SIDE_INCHES * DPI - 1
    assert (~_white(px[cor_top + 1:bottom - 1, col])).all()


@pytest.mark.parametrize("z_fg, nz, want", [((1, 4), 6, [1, 2, 3]), ((0, 0), 6, [0, 1, 2]),
                                           ((5, 5), 6, [3, 4, 5]), ((0, 1), 2, [0, 1]), ((0, 39), 40, [10, 20, 29])])
def test_axial_slices_are_distinct_inside_the_foreground(z_fg, nz, want):
    lab = np.zeros((nz, 4, 4), dtype=np.uint8)
    lab[z_fg[0]:z_fg[1] + 1, 1, 2] = 1
    zs, y, x = preview.preview_slices(lab)
    assert zs == want and (y, x) == (1, 2)
