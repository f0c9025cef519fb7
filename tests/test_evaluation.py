"""FLARE23 DSC/NSD: hand-checked cubes, the empty/z-range/DSC rules, folder evaluation and CLI."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial import cKDTree

from flareseg.cli import main
from flareseg.config import EvaluationConfig
from flareseg.evaluation.evaluate import evaluate_folders
from flareseg.evaluation.metrics import dice, evaluate_case, surface_dice
from flareseg.evaluation.surfels import surfels
from flareseg.io import Geometry, read_array, write_array

CT_SEG = "ct/ts_example_ct_sm_seg_flare.nii.gz"


# --------------------------------------------------------------------------- hand-checked cubes

def _box_parts(n: int, m: int, sz: float, s: float) -> tuple[float, float, float]:
    """Marching-cubes surface of an n (z) x m x m voxel box, spacing (sz, s, s), split in parts.

    L: side walls between the two caps (flat cells sz*s, vertical-edge cells sz*s/sqrt(2));
    R: rim of one cap (edge cells: s x hypot(sz/2, s/2) rectangles; corners: triangles with
    intercepts sz/2, s/2, s/2); I: flat interior of one cap ((m-1)^2 cells of s*s).
    """
    a, b = sz / 2, s / 2
    L = (n - 1) * (4 * (m - 1) * sz * s + 4 * sz * s / math.sqrt(2))
    R = 4 * (m - 1) * s * math.hypot(a, b) + 4 * 0.5 * math.sqrt(2 * a * a * b * b + b ** 4)
    I = (m - 1) ** 2 * s * s
    return L, R, I


def _cubes(n=6, m=5, shape=(12, 11, 11)):
    ref = np.zeros(shape, bool)
    ref[2:2 + n, 3:3 + m, 3:3 + m] = True
    pred = np.zeros_like(ref)
    pred[3:3 + n, 3:3 + m, 3:3 + m] = True  # one voxel further along z
    return pred, ref


def test_box_surface_area_matches_hand_formula():
    n, m, sz, s = 6, 5, 2.0, 0.7
    _, ref = _cubes(n, m)
    border, area = surfels(ref, (sz, s, s))
    L, R, I = _box_parts(n, m, sz, s)
    assert area[border].sum() == pytest.approx(L + 2 * R + 2 * I, rel=1e-12)
    assert area[~border].sum() == 0


def test_cubes_offset_along_z_dsc_and_nsd_by_hand():
    n, m = 6, 5
    pred, ref = _cubes(n, m)
    assert dice(pred, ref) == pytest.approx((n - 1) / n)  # n-1 of n layers overlap

    # z spacing 2 mm, in-plane 1 mm, tolerance 0.9 mm < every spacing: only surfels at distance 0
    # count: all side walls and the rim of the cap that lies inside the other cube.
    sz, s = 2.0, 1.0
    L, R, I = _box_parts(n, m, sz, s)
    assert surface_dice(pred, ref, (sz, s, s), 0.9) == pytest.approx((L + R) / (L + 2 * R + 2 * I), rel=1e-12)
    # z spacing 1 mm, in-plane 2 mm, tolerance 1.5 mm: the shifted caps are 1 mm apart, so every
    # surfel is within tolerance of the other surface
    assert surface_dice(pred, ref, (1.0, 2.0, 2.0), 1.5) == pytest.approx(1.0)

    # z spacing 3 mm, in-plane 1 mm, tolerance 1.5 mm: the shifted caps stay 3 mm away, but the
    # first interior ring of the inner cap is 1 mm from the other box's side wall.
    sz, s = 3.0, 1.0
    L, R, I = _box_parts(n, m, sz, s)
    near = ((m - 1) ** 2 - (m - 3) ** 2) * s * s
    assert surface_dice(pred, ref, (sz, s, s), 1.5) == pytest.approx((L + R + near) / (L + 2 * R + 2 * I), rel=1e-12)


def test_evaluate_case_cubes_uses_class_tolerance():
    pred, ref = _cubes()
    cfg = replace(EvaluationConfig(), nsd_tolerance_mm={3: 0.9})
    L, R, I = _box_parts(6, 5, 2.0, 1.0)
    (d, nsd), = evaluate_case(pred.astype(np.uint8) * 3, ref.astype(np.uint8) * 3, (2.0, 1.0, 1.0), cfg,
                              classes=(3,)).values()
    assert d == pytest.approx(5 / 6)
    assert nsd == pytest.approx((L + R) / (L + 2 * R + 2 * I))


# --------------------------------------------------------------------------- rules

def test_empty_rules():
    ref = np.zeros((8, 8, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:5, 2:5, 2:5] = 1          # liver only in the reference
    pred[2:5, 2:5, 2:5] = 2         # right kidney only in the prediction
    out = evaluate_case(pred, ref, (1.0, 1.0, 1.0), classes=(1, 2, 3))
    assert out[3] == (1.0, 1.0)     # both empty
    assert out[2] == (0.0, 0.0)     # reference empty, prediction not
    assert out[1] == (0.0, 0.0)     # prediction empty, reference not


@pytest.mark.parametrize("c, zrule", [(5, True), (6, True), (10, True), (1, False)])
def test_z_range_rule(c, zrule):
    ref = np.zeros((24, 8, 8), np.uint8)
    ref[3:7, 3:5, 3:5] = c
    pred = ref.copy()
    pred[15:18, 3:5, 3:5] = c       # extra prediction on slices without reference, 8 mm away
    d, nsd = evaluate_case(pred, ref, (1.0, 1.0, 1.0), classes=(c,))[c]
    if zrule:
        assert (d, nsd) == (1.0, 1.0)
    else:
        assert d == pytest.approx(2 * 16 / (16 + 28)) and nsd < 1.0
    only_outside = np.where(ref == c, 0, pred).astype(np.uint8)
    assert evaluate_case(only_outside, ref, (1.0, 1.0, 1.0), classes=(c,))[c] == (0.0, 0.0)


def test_z_range_uses_reference_slices_inclusive():
    ref = np.zeros((10, 6, 6), np.uint8)
    ref[2:6, 2:4, 2:4] = 5
    pred = np.zeros_like(ref)
    pred[5, 2:4, 2:4] = 5           # last reference slice counts
    d, _ = evaluate_case(pred, ref, (1.0, 1.0, 1.0), classes=(5,))[5]
    assert d == pytest.approx(2 * 4 / (4 + 16))


def test_nsd_zero_below_min_dsc():
    ref = np.zeros((44, 12, 12), np.uint8)
    ref[1:21, 1:11, 1:11] = 1
    pred = np.zeros_like(ref)
    pred[20:40, 1:11, 1:11] = 1    # one of 20 layers overlaps: DSC 0.05
    cfg = replace(EvaluationConfig(), nsd_tolerance_mm={1: 5.0})
    d, nsd = evaluate_case(pred, ref, (1.0, 1.0, 1.0), cfg, classes=(1,))[1]
    assert d == pytest.approx(0.05) and nsd == 0.0
    d2, nsd2 = evaluate_case(pred, ref, (1.0, 1.0, 1.0), replace(cfg, nsd_min_dsc=0.0), classes=(1,))[1]
    assert d2 == d and nsd2 > 0.2


def test_cropping_does_not_change_scores():
    rng = np.random.default_rng(0)
    from scipy import ndimage
    ref = (ndimage.gaussian_filter(rng.random((20, 24, 22)), 2) > 0.5).astype(np.uint8) * 4
    pred = (ndimage.gaussian_filter(rng.random((20, 24, 22)), 2) > 0.5).astype(np.uint8) * 4
    sp = (2.5, 0.8, 1.1)
    got = evaluate_case(pred, ref, sp, classes=(4,))[4]
    full = (dice(pred == 4, ref == 4), surface_dice(pred == 4, ref == 4, sp, 5.0))
    assert got == pytest.approx(full, abs=1e-12)


# --------------------------------------------------------------------------- real sample + CLI

def _direct_scores(pred: np.ndarray, ref: np.ndarray, spacing, cfg: EvaluationConfig, c: int):
    """Independent computation: full volume, numpy DSC, brute-force nearest surfel distances."""
    p, r = pred == c, ref == c
    if c in cfg.z_range_classes:
        zs = np.flatnonzero(r.any(axis=(1, 2)))
        p, r = p[zs[0]:zs[-1] + 1], r[zs[0]:zs[-1] + 1]
    d = 2 * np.sum(p & r) / (p.sum() + r.sum())
    if d < cfg.nsd_min_dsc:
        return d, 0.0
    (bp, ap), (br, ar) = surfels(p, spacing), surfels(r, spacing)
    xp, xr = np.argwhere(bp) * spacing, np.argwhere(br) * spacing
    tol = cfg.nsd_tolerance_mm[c]
    dp = cKDTree(xr).query(xp)[0]
    dr = cKDTree(xp).query(xr)[0]
    nsd = (ap[bp][dp <= tol].sum() + ar[br][dr <= tol].sum()) / (ap[bp].sum() + ar[br].sum())
    return d, nsd


def _read_csv(path):
    with open(path) as f:
        return {(r["case"], int(r["class"])): (float(r["dsc"]), float(r["nsd"])) for r in csv.DictReader(f)}


def test_cli_evaluate_sample_against_itself(shared_data, tmp_path, capsys):
    seg = shared_data / CT_SEG
    present = [int(c) for c in np.unique(read_array(seg)[0]) if c]
    assert main(["evaluate", "--pred", str(seg), "--gt", str(seg), "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_cases"] == 1
    for c in present:
        assert summary["per_class"][str(c)]["dsc"] == 1.0
        assert summary["per_class"][str(c)]["nsd"] == 1.0
    assert "organ mean" in capsys.readouterr().out


def test_cli_evaluate_sample_shifted_along_x(shared_data, tmp_path):
    seg = shared_data / CT_SEG
    ref, geo = read_array(seg)
    shifted = np.zeros_like(ref)
    shifted[:, :, 1:] = ref[:, :, :-1]
    pred_path = write_array(shifted, geo, tmp_path / "pred" / seg.name)
    assert main(["evaluate", "--pred", str(pred_path), "--gt", str(seg), "--out", str(tmp_path / "rep")]) == 0
    got = _read_csv(tmp_path / "rep" / "per_case.csv")
    cfg = EvaluationConfig()
    case = "ts_example_ct_sm_seg_flare"
    present = [int(c) for c in np.unique(ref) if c]
    for c in present:
        want = _direct_scores(shifted, ref, np.array(geo.spacing_zyx), cfg, c)
        assert got[(case, c)] == pytest.approx(want, abs=2e-6)  # CSV keeps 6 decimals
    assert all(got[(case, c)][0] < 1.0 for c in present)
    assert any(got[(case, c)][1] < 1.0 for c in present)


# --------------------------------------------------------------------------- folders

def _geo(spacing=(1.0, 1.0, 2.0), size=(10, 9, 8)):
    return Geometry(size, spacing, (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def test_folder_matching_grid_mismatch_missing_extra(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    lab = np.zeros((8, 9, 10), np.uint8)
    lab[2:6, 2:6, 2:7] = 1
    for case in ("a", "b", "d"):
        write_array(lab, _geo(), gt / f"{case}.nii.gz")
    bad = write_array(lab, _geo(spacing=(1.0, 1.0, 3.0)), pred / "a.nii.gz")
    write_array(lab, _geo(), pred / "b_0000.mha")       # suffix and _0000 are ignored
    write_array(lab, _geo(), pred / "c.nii.gz")          # no reference
    res = evaluate_folders(pred, gt, out_dir=tmp_path / "rep")
    assert res.missing == ["d"] and res.extra == ["c"]
    assert set(res.scores) == {"b"} and res.scores["b"][1] == (1.0, 1.0)
    assert str(bad) in res.errors["a"] and str(gt / "a.nii.gz") in res.errors["a"]
    assert "spacing" in res.errors["a"]
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["missing"] == ["d"] and summary["extra"] == ["c"] and "a" in summary["errors"]

    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 1
    out = capsys.readouterr().out
    assert "missing predictions (1): d" in out and "predictions without reference (1): c" in out
    assert "error a:" in out

    zero = evaluate_folders(pred, gt, missing_as_zero=True)
    assert zero.scores["d"][1] == (0.0, 0.0) and zero.per_class()[1] == (0.5, 0.5)


def test_dice_per_class_over_classes_in_either_map():
    from flareseg.evaluation.metrics import dice_per_class
    a = np.zeros((2, 4, 4), np.uint8)
    b = np.zeros_like(a)
    a[0, :2, :2] = 1          # 4 voxels
    b[0, :2, :1] = 1          # 2 of them
    b[1, 0, 0] = 3            # only in b
    assert dice_per_class(a, b) == {1: pytest.approx(2 * 2 / 6), 3: 0.0}
    assert dice_per_class(a, b, classes=[2]) == {2: 1.0}   # absent from both: FLARE's 1.0


def test_foreground_unchanged_counts_only_the_reference_foreground():
    from flareseg.evaluation.metrics import foreground_unchanged
    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2, :2] = 1                       # 4 foreground voxels
    other = ref.copy()
    other[0, 0, 0] = 0                       # one of them lost
    other[1] = 2                             # new foreground elsewhere does not count
    assert foreground_unchanged(ref, other) == pytest.approx(0.75)
    assert foreground_unchanged(np.zeros_like(ref), other) == 1.0
