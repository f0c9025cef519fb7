"""Sliding-window stitching with toy predictors (no network)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from flareseg.inference.sliding_window import (axis_starts, gaussian_importance, pad_to_patch,
                                               predict_sliding_window, window_grid)


def _double(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


@pytest.mark.parametrize("shape,patch,step", [
    ((16, 32, 32), (16, 32, 32), 0.5),
    ((40, 70, 33), (16, 32, 32), 0.5),
    ((17, 100, 64), (16, 32, 32), 0.25),
    ((50, 50, 50), (8, 16, 16), 1.0),
])
def test_window_grid_covers_every_voxel(shape, patch, step):
    cover = np.zeros(shape, dtype=int)
    planes = window_grid(shape, patch, step)
    assert len({pl.z for pl in planes}) == len(planes)
    for pl in planes:
        for z, y, x in pl.windows():
            assert z + patch[0] <= shape[0] and y + patch[1] <= shape[1] and x + patch[2] <= shape[2]
            cover[z:z + patch[0], y:y + patch[1], x:x + patch[2]] += 1
    assert cover.min() >= 1


def test_axis_starts_match_nnunet():
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    for size, patch, step in itertools.product((32, 33, 47, 100, 257), (16, 32), (0.5, 0.33, 1.0)):
        if size < patch:
            continue
        ref = compute_steps_for_sliding_window((size,), (patch,), step)[0]
        assert axis_starts(size, patch, step) == ref, (size, patch, step)


def test_gaussian_matches_nnunet():
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    patch = (16, 32, 24)
    ref = compute_gaussian(patch, 1 / 8, 10, dtype=torch.float32, device=torch.device("cpu"))
    ours = gaussian_importance(patch)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert float(ours.min()) > 0


@pytest.mark.parametrize("shape", [(20, 45, 40), (10, 20, 70)])  # second needs padding in z and y
def test_stitching_reproduces_toy_predictor(shape):
    g = torch.Generator().manual_seed(0)
    vol = torch.rand((2, *shape), generator=g)
    out, stats = predict_sliding_window(vol, _double, (16, 32, 32), batch_windows=3,
                                        return_logits=True)
    assert out.shape == (2, *shape)
    assert torch.allclose(out, 2 * vol, atol=1e-5)
    assert stats.windows_run == stats.windows_total > 0 and stats.windows_skipped == 0


def test_labels_are_argmax_and_batching_does_not_matter():
    g = torch.Generator().manual_seed(1)
    vol = torch.rand((3, 24, 50, 41), generator=g)
    labels1, _ = predict_sliding_window(vol, _double, (16, 32, 32), batch_windows=1)
    labels5, _ = predict_sliding_window(vol, _double, (16, 32, 32), batch_windows=5)
    assert labels1.dtype == torch.uint8
    assert torch.equal(labels1, vol.argmax(0).to(torch.uint8))
    assert torch.equal(labels1, labels5)


def test_float16_accumulators_close_to_float32():
    """Stock's float16 sums: close wherever the summed weight is a normal float16 number; in the
    corners, reached only by window tails, subnormal weights quantise the logits as in stock."""
    vol = torch.rand((2, 20, 40, 40), generator=torch.Generator().manual_seed(2))
    a, _ = predict_sliding_window(vol, _double, (16, 32, 32), dtype=torch.float16, return_logits=True)
    weight = torch.zeros(vol.shape[1:])
    g = gaussian_importance((16, 32, 32))
    for pl in window_grid(vol.shape[1:], (16, 32, 32), 0.5):
        for z, y, x in pl.windows():
            weight[z:z + 16, y:y + 32, x:x + 32] += g
    normal = weight >= 2 * torch.finfo(torch.float16).tiny
    assert a.dtype == torch.float16 and 0.5 < normal.float().mean() < 1
    assert torch.allclose(a.float()[:, normal], 2 * vol[:, normal], atol=1e-2)
    assert (a.float() - 2 * vol).abs().max() > 0.1     # quantised corners, as stock's


@pytest.mark.parametrize("patch", [(16, 32, 24), (32, 192, 192), (128, 128, 128), (20, 40, 36)])
def test_float16_gaussian_is_stocks(patch):
    """Stock's float16 map bit for bit: zeros replaced by the smallest non-zero (subnormal) value,
    no floor (at 32x192x192 a floor of 1e-3 of the peak moved 37 % of the weights)."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    ref = compute_gaussian.__wrapped__(patch, 1 / 8, 10, dtype=torch.float16, device=torch.device("cpu"))
    ours = gaussian_importance(patch, dtype=torch.float16)
    assert torch.equal(ours, ref)
    assert 0 < float(ours.min()) < torch.finfo(torch.float16).tiny       # subnormal tails, as stock


def test_padded_last_batch_gives_identical_results():
    """Padding the last batch of a pass to ``batch_windows`` (one batch shape for cuDNN's autotuning)
    runs zero windows whose outputs are dropped: logits and labels unchanged, with skipping too."""
    vol = torch.rand((3, 24, 50, 41), generator=torch.Generator().manual_seed(4))
    shapes = []

    def net(x):
        shapes.append(x.shape[0])
        return torch.cat([2 * x, x[:, :1] * 0.5], 1)
    for kw in (dict(return_logits=True), dict(skip=True)):
        shapes.clear()
        a, sa = predict_sliding_window(vol, net, (16, 32, 32), batch_windows=5, pad_batch=False, **kw)
        plain = list(shapes)
        shapes.clear()
        b, sb = predict_sliding_window(vol, net, (16, 32, 32), batch_windows=5, pad_batch=True, **kw)
        assert torch.equal(a, b) and sa.as_dict() == sb.as_dict()
        assert set(shapes) == {5} and len(set(plain)) > 1


def test_window_dependent_predictor_is_gaussian_weighted():
    """A predictor whose output depends on the position inside the window: centres dominate."""
    patch = (8, 16, 16)
    ramp = torch.arange(patch[2], dtype=torch.float32)

    def pos(x):  # logit 1 = x position inside the window
        out = torch.zeros((x.shape[0], 2, *patch))
        out[:, 1] = ramp
        return out

    vol = torch.zeros((1, 8, 16, 24))
    logits, _ = predict_sliding_window(vol, pos, patch, return_logits=True)
    # windows start at x=0 and x=8; at x=12 the second window's centre (8+8=16 is its centre... 12 is
    # 4 left of it) and the first window's position 12 (4 right of its centre 8) weigh equally
    assert torch.allclose(logits[1, :, :, 12], torch.full((8, 16), (12 + 4) / 2.0), atol=1e-4)


def test_pad_to_patch_roundtrip():
    vol = torch.arange(2 * 5 * 7 * 9, dtype=torch.float32).reshape(2, 5, 7, 9)
    padded, crop = pad_to_patch(vol, (8, 8, 8), value=-1)
    assert padded.shape == (2, 8, 8, 9)
    assert torch.equal(padded[(slice(None), *crop)], vol)
    assert float(padded[0, 0, 0, 0]) == -1


def test_bad_predictor_output_is_reported():
    with pytest.raises(ValueError, match="predictor returned shape"):
        predict_sliding_window(torch.zeros((1, 16, 32, 32)), lambda x: x[:, :, :8], (16, 32, 32))


def test_float16_overflow_is_caught_and_predicted_in_float32(caplog):
    """Stock's inf check: logits x the Gaussian (peak 10) beyond float16's range make inf sums;
    the volume is then predicted again in float32 (stock aborts), with a warning."""
    vol = torch.rand((2, 20, 40, 40), generator=torch.Generator().manual_seed(5)) * 8000

    def net(x):
        return x.half()

    with caplog.at_level("WARNING"):
        a, _ = predict_sliding_window(vol, net, (16, 32, 32), dtype=torch.float16, return_logits=True)
    b, _ = predict_sliding_window(vol, net, (16, 32, 32), dtype=torch.float32, return_logits=True)
    assert "overflowed" in caplog.text
    assert a.dtype == torch.float32 and torch.isfinite(a).all() and torch.equal(a, b)
