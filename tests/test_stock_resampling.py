"""Stock-rule resampling on the device against nnU-Net's own (scipy/skimage) resampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flareseg.inference.resample import nearest_indices, resample_image
from flareseg.inference.stock_resampling import (argmax_of_interpolation, export_samples, linear_weights,
                                                 resample_image_bspline, separate_axis)


def smooth_logits(k=4, shape=(6, 9, 8), seed=0) -> torch.Tensor:
    """``(K, Z, Y, X)`` smooth random logits (upsampled noise), so argmax regions are blobs."""
    g = torch.Generator().manual_seed(seed)
    return resample_image(torch.randn((k, 3, 4, 4), generator=g) * 3, shape)


def stock_resample(data: np.ndarray, shape, current, new, order: int) -> np.ndarray:
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
    return resample_data_or_seg_to_shape(data, shape, current, new, is_seg=False, order=order, order_z=0,
                                         force_separate_z=None)


def test_separate_axis_follows_nnunet_rule():
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis
    cases = [((4.0, 3.0, 3.0), (3.9, 0.8, 0.8)), ((1.4, 0.76, 0.76), (4.0, 3.0, 3.0)),
             ((0.8, 0.8, 5.0), (1.0, 1.0, 1.0)), ((3.0, 3.0, 0.8), (1.0, 1.0, 1.0)), ((1, 1, 1), (2, 2, 2))]
    for cur, new in cases:
        sep, axis = determine_do_sep_z_and_axis(None, cur, new)
        assert separate_axis(cur, new) == (axis if sep else None), (cur, new)
    assert separate_axis((2.0, 1.0, 1.0), (1, 1, 1), force=True) == 0
    assert separate_axis((5.0, 1.0, 1.0), (1, 1, 1), force=False) is None


def test_linear_weights_reproduce_torch_interpolation():
    v = torch.randn(7)
    for n_out in (3, 7, 16):
        i0, i1, w = linear_weights(7, n_out, "cpu")
        ref = torch.nn.functional.interpolate(v[None, None], size=n_out, mode="linear", align_corners=False)[0, 0]
        assert torch.allclose((1 - w) * v[i0] + w * v[i1], ref, atol=1e-6)


@pytest.mark.parametrize("chunk_mb", [0.001, 256.0])
def test_logit_upsampling_equals_trilinear_then_argmax(chunk_mb):
    lg = smooth_logits()
    out = argmax_of_interpolation(lg, export_samples(lg.shape[1:], (17, 25, 21)), chunk_mb)
    ref = resample_image(lg, (17, 25, 21)).argmax(0)
    assert out.dtype == torch.uint8 and out.shape == (17, 25, 21)
    assert (out == ref).float().mean() > 0.999


@pytest.mark.parametrize("current,new,out_shape", [
    ((4.0, 3.0, 3.0), (3.9, 0.8, 0.8), (6, 34, 30)),    # anisotropic input: z nearest, in-plane linear
    ((3.0, 3.0, 3.0), (1.5, 1.2, 1.2), (12, 22, 20)),   # isotropic: trilinear
    ((1.0, 1.0, 4.0), (1.0, 0.5, 0.5), (6, 18, 8)),     # coarse last axis
])
def test_logit_upsampling_matches_stock_export(current, new, out_shape):
    lg = smooth_logits()
    ref = stock_resample(lg.numpy(), out_shape, current, new, order=1).argmax(0)
    ours = argmax_of_interpolation(
        lg, export_samples(lg.shape[1:], out_shape, separate_axis(current, new), 0), chunk_mb=0.01).numpy()
    assert (ours == ref).mean() > 0.995


@pytest.mark.parametrize("current,new,in_shape,out_shape", [
    ((3.9, 0.8, 0.8), (4.0, 3.0, 3.0), (12, 60, 56), (12, 16, 15)),   # separate z (nearest)
    ((1.4, 0.8, 0.8), (3.0, 3.0, 3.0), (30, 60, 56), (14, 16, 15)),   # 3-D spline
    ((2.5, 0.8, 0.8), (2.5, 1.5, 1.5), (20, 100, 90), (20, 53, 48)),  # FLARE-like input -> coarse plan
    ((1.0, 1.0, 1.0), (0.7, 0.6, 0.8), (10, 12, 14), (14, 20, 18)),   # upsampling
])
def test_bspline_image_resampling_equals_nnunets(current, new, in_shape, out_shape):
    """The device B-spline reproduces nnU-Net's own order-3 resampling (scipy) to float precision,
    edges, overshoot clipping and noise included; trilinear is ~0.07 off on average."""
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in in_shape], indexing="ij")
    vol = np.sin(7 * x + 3 * y) * np.cos(5 * z) + (((y - 0.5) ** 2 + (x - 0.4) ** 2) < 0.1)
    vol = vol + 0.3 * np.random.default_rng(0).standard_normal(in_shape)
    ref = stock_resample(vol[None], out_shape, current, new, order=3)[0]
    t = torch.from_numpy(vol).float()
    ours = resample_image_bspline(t, out_shape, separate_axis(current, new), 0).numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4
    assert np.abs(resample_image(t, out_shape).numpy() - ref).mean() > 0.03  # the test can tell
    const = resample_image_bspline(torch.full(in_shape, 2.5), out_shape, None)
    assert torch.allclose(const, torch.full(out_shape, 2.5), atol=1e-5)


@pytest.mark.parametrize("in_shape,out_shape", [((6, 9, 8), (17, 25, 21)), ((6, 9, 8), (6, 25, 21)),
                                                ((5, 5, 5), (5, 5, 5)), ((3, 4, 4), (2, 9, 3))])
def test_boundary_only_export_is_exact_even_for_noise(in_shape, out_shape):
    """Interpolating only cells whose corners disagree gives the dense result voxel for voxel, also
    for white-noise logits (nearly every cell a boundary), a nearest axis and tiny chunks."""
    g = torch.Generator().manual_seed(1)
    lg = torch.randn((5, *in_shape), generator=g) * 3
    dense = torch.nn.functional.interpolate(lg[None], size=out_shape, mode="trilinear",
                                            align_corners=False)[0].argmax(0)
    assert torch.equal(argmax_of_interpolation(lg, export_samples(in_shape, out_shape), chunk_mb=1e-4), dense.to(torch.uint8))
    z_nearest = lg.index_select(1, nearest_indices(in_shape[0], out_shape[0], "cpu"))
    dense_z = torch.nn.functional.interpolate(z_nearest.transpose(0, 1), size=out_shape[1:], mode="bilinear",
                                              align_corners=False).argmax(1)
    assert torch.equal(argmax_of_interpolation(lg, export_samples(in_shape, out_shape, 0, 0)), dense_z.to(torch.uint8))


def test_boundary_only_export_keeps_the_label_inside_uniform_cells():
    """A one-class volume needs no interpolation at all; half-precision logits are accepted."""
    lg = torch.zeros((3, 4, 5, 6), dtype=torch.float16)
    lg[2] = 1
    out = argmax_of_interpolation(lg, export_samples(lg.shape[1:], (9, 11, 13)))
    assert out.dtype == torch.uint8 and bool((out == 2).all())
    with pytest.raises(ValueError, match="logits"):
        argmax_of_interpolation(lg[0], export_samples(lg.shape[1:], (9, 11, 13)))
