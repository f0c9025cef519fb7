"""Window skipping: the indicator rule per grid and properties of skipped predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flareseg.inference.skipping import indicator_windows, plan_skipping, planes_to_run
from flareseg.inference.sliding_window import predict_sliding_window, window_grid

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


def _run(vol: np.ndarray, skip: bool, threshold: int = 1):
    t = torch.from_numpy(vol.astype(np.float32))[None]
    labels, stats = predict_sliding_window(t, blob_predictor, PATCH, skip=skip,
                                           skip_threshold=threshold, batch_windows=4)
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


@pytest.mark.parametrize("seed", range(6))
def test_skipping_never_changes_a_plane_with_foreground(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in (rng.integers(8, 40), rng.integers(16, 70), rng.integers(16, 70)))
    vol = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        c = [int(rng.integers(0, s)) for s in shape]
        r = [int(rng.integers(1, 5)) for _ in shape]
        vol[tuple(slice(max(0, a - b), a + b) for a, b in zip(c, r))] = 1
    ref, _ = _run(vol, skip=False)
    out, stats = _run(vol, skip=True)
    pad_z = max(0, PATCH[0] - shape[0]) // 2
    for pl in window_grid((max(shape[0], PATCH[0]),) + shape[1:], PATCH, 0.5):
        if pl.z in stats.planes_skipped:
            continue
        z0, z1 = max(0, pl.z - pad_z), pl.z - pad_z + PATCH[0]
        assert np.array_equal(out[z0:z1], ref[z0:z1])
    # skipping only ever removes foreground; it never invents it
    assert not np.any(out.astype(bool) & ~ref.astype(bool))


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


def test_object_outside_indicators_of_an_empty_plane_is_dropped():
    """Documented limit: a plane whose indicators see nothing is background beyond them."""
    vol = np.zeros((8, 48, 48), dtype=np.float32)
    vol[2:6, 0:3, 45:48] = 1
    out, stats = _run(vol, skip=True)
    assert stats.windows_skipped > 0 and out.sum() == 0
