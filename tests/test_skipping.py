"""Window skipping: the indicator rule per grid and properties of skipped predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from flareseg.inference.skipping import (CellGrid, indicator_windows, plan_skipping, planes_to_grow,
                                         planes_to_run, record_foreground)
from flareseg.inference.sliding_window import (cell_counts, foreground_cell_corners,
                                               predict_sliding_window, window_grid)

PATCH = (8, 16, 16)


@pytest.mark.parametrize("grid,expected", [
    ((1, 1), [(0, 0)]),
    ((1, 2), [(0, 0), (0, 1)]),
    ((1, 3), [(0, 1)]),
    ((2, 2), [(0, 0), (1, 1)]),            # paper: windows 0 and 3
    ((2, 3), [(0, 0), (1, 1), (1, 2)]),
    ((3, 3), [(1, 1)]),                    # paper: the centre
    ((4, 4), [(0, 0), (1, 1), (2, 2), (3, 3)]),
    ((5, 2), [(0, 0), (1, 0), (2, 1), (3, 1), (4, 1)]),
])
def test_indicator_rule(grid, expected):
    ny, nx = grid
    got = indicator_windows(ny, nx)
    assert got == expected
    if (ny, nx) != (1, 1) and min(ny, nx) > 1 and not (ny == nx == 3):
        # generalised rule: every row and every column holds an indicator window
        assert {iy for iy, _ in got} == set(range(ny)) and {ix for _, ix in got} == set(range(nx))


def test_plan_has_every_window_once():
    grids = [(2, 2), (3, 3), (1, 2), (5, 2)]
    plan = plan_skipping(grids, skip=True)
    allw = plan.first + [w for r in plan.rest_of_plane for w in r]
    assert sorted(allw) == list(range(sum(a * b for a, b in grids)))
    assert plan.first == [0, 3, 8, 13, 14, 15, 17, 20, 22, 24]
    assert planes_to_run(plan, {w: 0 for w in plan.first}, 1) == [False, False, True, False]
    no = plan_skipping(grids, skip=False)
    assert all(not r for r in no.rest_of_plane)


def blob_predictor(x: torch.Tensor) -> torch.Tensor:
    """Toy network: class 1 where the image is above 0.5; depends only on the voxel's value."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1] - 0.5], dim=1)


def _run(vol: np.ndarray, skip: bool, threshold: int = 1, grow: bool = True, step: float = 0.5):
    t = torch.from_numpy(vol.astype(np.float32))[None]
    labels, stats = predict_sliding_window(t, blob_predictor, PATCH, step_size=step, skip=skip,
                                           skip_threshold=threshold, batch_windows=4, grow=grow)
    return labels.numpy(), stats


def test_background_outside_blob_gives_identical_result_and_skips():
    vol = np.zeros((40, 32, 32), dtype=np.float32)  # 3x3 grid per plane, 9 planes
    vol[2:6, 14:18, 12:20] = 1                       # blob in the centre of the first planes
    ref, s0 = _run(vol, skip=False)
    out, s1 = _run(vol, skip=True)
    assert np.array_equal(out, ref)
    assert s0.windows_skipped == 0 and s0.windows_run == s0.windows_total
    assert s1.windows_skipped > 0
    assert s1.windows_run + s1.windows_skipped == s1.windows_total == s0.windows_total
    assert 0 not in s1.planes_skipped


def test_skipped_region_is_background_not_uninitialised():
    vol = np.zeros((24, 32, 32), dtype=np.float32)
    t = torch.from_numpy(vol)[None]
    logits, stats = predict_sliding_window(t, blob_predictor, PATCH, skip=True, return_logits=True)
    assert stats.windows_skipped == stats.windows_total - stats.planes_total  # only centres ran
    assert torch.isfinite(logits).all()
    assert (logits.argmax(0) == 0).all()


def _random_blobs(seed: int) -> np.ndarray:
    """1 to 3 random boxes (class 1 for the toy network) in a random ``(Z, Y, X)`` volume."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in (rng.integers(8, 40), rng.integers(16, 70), rng.integers(16, 70)))
    vol = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        c = [int(rng.integers(0, s)) for s in shape]
        r = [int(rng.integers(1, 5)) for _ in shape]
        vol[tuple(slice(max(0, a - b), a + b) for a, b in zip(c, r))] = 1
    return vol


@pytest.mark.parametrize("grow", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_skipping_never_changes_a_plane_with_foreground(seed, grow):
    vol = _random_blobs(seed)
    shape = vol.shape
    ref, _ = _run(vol, skip=False)
    out, stats = _run(vol, skip=True, grow=grow)
    pad_z = max(0, PATCH[0] - shape[0]) // 2
    for pl in window_grid((max(shape[0], PATCH[0]),) + shape[1:], PATCH, 0.5):
        if pl.z in stats.planes_skipped:
            continue
        z0, z1 = max(0, pl.z - pad_z), pl.z - pad_z + PATCH[0]
        assert np.array_equal(out[z0:z1], ref[z0:z1])
    # skipping only ever removes foreground; it never invents it
    assert not np.any(out.astype(bool) & ~ref.astype(bool))
    assert stats.windows_run + stats.windows_skipped == stats.windows_total
    if not grow:
        assert stats.planes_grown == []


def _partly_kept_objects(ref: np.ndarray, out: np.ndarray) -> int:
    """Connected (26-neighbourhood) objects of ``ref`` that ``out`` keeps only in part."""
    lab, n = ndimage.label(ref, np.ones((3, 3, 3)))
    kept = ndimage.sum_labels(out.astype(bool), lab, np.arange(1, n + 1))
    size = ndimage.sum_labels(np.ones_like(ref, dtype=bool), lab, np.arange(1, n + 1))
    return int(np.sum((kept > 0) & (kept < size)))


def test_growth_keeps_every_object_whole_or_drops_it_whole():
    partial = {True: 0, False: 0}
    for seed in range(16):
        vol = _random_blobs(seed)
        ref, _ = _run(vol, skip=False)
        for grow in (True, False):
            partial[grow] += _partly_kept_objects(ref, _run(vol, skip=True, grow=grow)[0])
    assert partial[True] == 0
    assert partial[False] > 0  # without growth, objects are cut at skipped planes


def test_threshold_counts_foreground_voxels():
    vol = np.zeros((8, 32, 32), dtype=np.float32)
    vol[4, 15:17, 15:17] = 1  # 4 voxels in the centre window
    out_keep, s_keep = _run(vol, skip=True, threshold=4)
    out_skip, s_skip = _run(vol, skip=True, threshold=5)
    assert s_keep.windows_skipped == 0 and out_keep.sum() == 4
    assert s_skip.windows_skipped == 8
    # the centre window itself still ran, so its foreground survives
    assert out_skip.sum() == 4


def test_border_object_kept_when_plane_has_foreground_in_indicators():
    vol = np.zeros((8, 48, 48), dtype=np.float32)  # 5x5 grid -> diagonal indicators
    vol[3:5, 20:28, 20:28] = 1   # organ in the middle
    vol[2:6, 0:3, 45:48] = 1     # tumour in the corner, outside every indicator window
    out, stats = _run(vol, skip=True)
    ref, _ = _run(vol, skip=False)
    assert stats.windows_skipped == 0
    assert np.array_equal(out, ref) and out[2:6, 0:3, 45:48].all()


def _border_tumour_volume() -> np.ndarray:
    """9 planes of 5x5 windows; a tumour along the lateral border (x 40:48, non-indicator windows
    of every plane) over z 0:24 that reaches the centre only in z 20:24 (planes z=16 and z=20)."""
    vol = np.zeros((40, 48, 48), dtype=np.float32)
    vol[0:24, 20:28, 40:48] = 1
    vol[20:24, 20:28, 16:48] = 1
    return vol


def test_border_object_connected_through_z_is_kept_by_growth():
    vol = _border_tumour_volume()
    ref, _ = _run(vol, skip=False)
    out, stats = _run(vol, skip=True)
    assert ref[0:24, 20:28, 40:48].all()
    assert np.array_equal(out, ref)
    # planes 0..12 are reached by a chain of growth steps (a fixed point, not one step), plane 24
    # touches the reach into the centre; planes 28 and 32 see nothing and stay skipped
    assert sorted(stats.planes_grown) == [0, 4, 8, 12, 24]
    assert stats.planes_skipped == [28, 32]
    assert stats.windows_skipped == 2 * 20  # 25 windows per plane, 5 indicators
    assert stats.windows_run + stats.windows_skipped == stats.windows_total
    d = stats.as_dict()
    assert d["planes_grown"] == 5 and d["planes_skipped"] == 2


def test_border_object_is_dropped_without_growth():
    vol = _border_tumour_volume()
    ref, _ = _run(vol, skip=False)
    out, stats = _run(vol, skip=True, grow=False)
    assert stats.planes_grown == [] and 0 in stats.planes_skipped
    assert out[0:16].sum() == 0 and ref[0:16].sum() > 0


def test_growth_crosses_touching_faces_at_step_one():
    vol = np.zeros((16, 32, 32), dtype=np.float32)  # step 1: 2 planes of 2x2 windows that only touch
    vol[4:12, 0:8, 20:28] = 1                       # window (0, 1) of both planes: not an indicator
    vol[4:8, 0:8, 8:28] = 1                         # reaches window (0, 0) in plane z=0 only
    ref, _ = _run(vol, skip=False, step=1.0)
    out, stats = _run(vol, skip=True, step=1.0)
    assert np.array_equal(out, ref) and stats.planes_grown == [8]
    off, s_off = _run(vol, skip=True, step=1.0, grow=False)
    assert s_off.planes_skipped == [8] and off[8:12].sum() == 0


def test_isolated_object_outside_indicators_of_empty_planes_is_dropped():
    """Remaining limit: an object that touches no foreground of any run window is skipped."""
    vol = np.zeros((40, 48, 48), dtype=np.float32)
    vol[2:6, 0:3, 45:48] = 1     # isolated, corner of the top planes
    vol[28:34, 20:28, 20:28] = 1  # organ in the centre of lower planes, far away
    ref, _ = _run(vol, skip=False)
    out, stats = _run(vol, skip=True)
    assert ref[2:6, 0:3, 45:48].all() and out[2:6, 0:3, 45:48].sum() == 0
    assert stats.windows_skipped > 0 and 0 in stats.planes_skipped
    assert np.array_equal(out[20:], ref[20:])


def test_growth_never_reruns_or_drops_a_window():
    vol = _border_tumour_volume()
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in vol.shape), indexing="ij")
    pos = (zz * 10000 + yy * 100 + xx).astype(np.float32)  # window start readable from its corner
    t = torch.from_numpy(np.stack([vol, pos]))

    def record(calls):
        def fn(x):
            calls.extend(int(v) for v in x[:, 1, 0, 0, 0].tolist())
            return blob_predictor(x)
        return fn

    runs = {}
    for grow in (False, True):
        calls: list[int] = []
        labels, stats = predict_sliding_window(t, record(calls), PATCH, skip=True, grow=grow)
        assert len(calls) == len(set(calls)) == stats.windows_run
        runs[grow] = (set(calls), labels.numpy(), stats)
    assert runs[False][0] < runs[True][0]
    # planes that ran without growth give the same labels with it
    for z in set(range(0, 33, 4)) - set(runs[False][2].planes_skipped):
        assert np.array_equal(runs[True][1][z:z + 8], runs[False][1][z:z + 8])


def test_cell_grid_boxes_and_growth_step():
    grid = CellGrid.of(([0, 4, 8], [0, 8], [0]), (8, 16, 16), (16, 24, 16))
    assert grid.edges == ((0, 3, 4, 7, 8, 9, 12, 13, 16), (0, 7, 8, 16, 17, 24), (0, 16))
    assert grid.shape == (8, 5, 1)
    assert grid.cells((4, 8, 0)) == (slice(2, 6), slice(2, 5), slice(0, 1))
    assert grid.cells((4, 8, 0), margin=1) == (slice(1, 7), slice(1, 5), slice(0, 1))
    assert grid.window_cuts((4, 0, 0)) == ([0, 3, 4, 5, 8], [0, 7, 8, 16], [0, 16])
    fg = np.zeros(grid.shape, dtype=np.int64)
    # the plane at z=0 ran and saw 3 foreground voxels in z 7..8, y 7..8 (its last cell along z);
    # its own window (0, 8) and the planes at z=4 and z=8 (touching z 7 by the margin) did not run
    counts = np.zeros((4, 3, 1), dtype=np.int64)
    counts[3, 1, 0] = 3
    record_foreground(fg, grid.cells((0, 0, 0)), counts)
    record_foreground(fg, grid.cells((0, 0, 0)), np.ones((4, 3, 1), dtype=np.int64))  # max, not sum
    assert fg.sum() == 3 + 11
    rest = [[grid.cells((z, 8, 0), margin=1)] for z in (0, 4, 8)]
    assert planes_to_grow([True, False, False], rest, fg, threshold=1) == [1, 2]
    assert planes_to_grow([False, False, False], rest, fg, threshold=1) == [0, 1, 2]
    # plane z=4 reaches cells holding 3 + 5 * 1 foreground voxels, plane z=8 only 3 + 1
    assert planes_to_grow([True, False, False], rest, fg, threshold=5) == [1]
    assert planes_to_grow([True, False, False], rest, fg, threshold=9) == []
    assert planes_to_grow([True, True, True], rest, fg, threshold=1) == []


def test_foreground_cell_counts_match_direct_sums():
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(rng.random((2, 8, 16, 16)) > 0.6)
    cuts = [([0, 3, 8], [0, 7, 8, 16], [0, 16]), ([0, 8], [0, 1, 15, 16], [0, 5, 9, 16])]
    for b, (corners, cut) in enumerate(zip(foreground_cell_corners(mask, cuts), cuts)):
        got = cell_counts(corners.numpy())
        m = mask[b].numpy()
        want = np.array([[[m[z0:z1, y0:y1, x0:x1].sum() for x0, x1 in zip(cut[2], cut[2][1:])]
                          for y0, y1 in zip(cut[1], cut[1][1:])] for z0, z1 in zip(cut[0], cut[0][1:])])
        assert np.array_equal(got, want) and got.sum() == m.sum()


def test_indicator_foreground_per_plane_explains_every_skip():
    """stats.indicator_foreground: one count per plane, the foreground voxels its indicator windows
    predicted; without growth a plane is skipped exactly when that count is below the threshold."""
    vol = np.zeros((40, 32, 32), dtype=np.float32)
    vol[2:6, 14:18, 12:20] = 1          # 128 voxels in the centre window of the first planes
    vol[30:32, 15:17, 15:16] = 1        # 4 voxels further up
    counts = []
    for threshold in (1, 5, 200):
        _, s = _run(vol, skip=True, threshold=threshold, grow=False)
        fg = s.indicator_foreground
        assert len(fg) == s.planes_total and max(fg) >= 128
        assert len([v for v in fg if v < threshold]) == len(s.planes_skipped)
        assert s.as_dict()["indicator_foreground"] == fg
        counts.append(len(s.planes_skipped))
    assert counts[0] < counts[1] < counts[2]    # the 4-voxel blob's planes, then the big blob's
    _, s = _run(vol, skip=False)
    assert s.indicator_foreground == []
