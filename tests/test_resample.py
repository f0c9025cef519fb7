"""Device resampling (image trilinear, labels nearest) and plans normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from flareseg.inference.normalize import normalize_
from flareseg.inference.resample import resample_image, target_shape
from flareseg.inference.stock_resampling import export_samples, take_nearest


def test_target_shape_matches_nnunet():
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    for shape, sp, tsp in [((30, 101, 122), (3.0, 3.0, 3.0), (2.5, 1.5, 1.5)),
                           ((20, 512, 512), (2.0, 0.977, 0.977), (2.5, 0.82, 0.82)),
                           ((7, 9, 11), (5.0, 0.7, 0.7), (1.0, 1.0, 1.0))]:
        assert list(target_shape(shape, sp, tsp)) == list(compute_new_shape(shape, sp, tsp))


def test_resample_image_keeps_constants_and_linear_ramps():
    z = torch.arange(20, dtype=torch.float32)
    vol = z[:, None, None].expand(20, 16, 12).clone()   # value = z index
    out = resample_image(vol, (40, 8, 24))
    assert out.shape == (40, 8, 24)
    # half-voxel convention: output voxel j sits at input coordinate (j + 0.5) / 2 - 0.5
    expect = ((torch.arange(40) + 0.5) / 2 - 0.5).clamp(0, 19)
    assert torch.allclose(out[:, 3, 5], expect, atol=1e-5)
    assert torch.allclose(resample_image(torch.full((2, 5, 6, 7), 3.0), (9, 4, 3)),
                          torch.full((2, 9, 4, 3), 3.0))
    assert resample_image(vol, vol.shape) is not None and torch.equal(resample_image(vol, vol.shape), vol)


@pytest.mark.parametrize("n_in,n_out", [((9, 13, 10), (21, 5, 33)), ((12, 12, 12), (8, 16, 32))])
def test_nearest_label_export_matches_sitk_nearest_in_physical_space(n_in, n_out):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 15, size=n_in).astype(np.uint8)
    ours = take_nearest(torch.from_numpy(lab), export_samples(n_in, n_out, nearest=True)).numpy()
    assert ours.dtype == np.uint8 and ours.shape == n_out

    img = sitk.GetImageFromArray(lab)
    sp_in = np.array([1.0, 1.3, 0.7])  # x, y, z
    img.SetSpacing(sp_in.tolist())
    size_in = np.array(n_in[::-1])
    size_out = np.array(n_out[::-1])
    sp_out = sp_in * size_in / size_out
    origin_out = (sp_out - sp_in) / 2   # first voxel edges coincide
    ref = sitk.Resample(img, size_out.tolist(), sitk.Transform(), sitk.sitkNearestNeighbor,
                        origin_out.tolist(), sp_out.tolist(), img.GetDirection(), 0, sitk.sitkUInt8)
    ref = sitk.GetArrayFromImage(ref)
    # sizes chosen without exact ties (an output centre halfway between two inputs)
    assert (ours == ref).mean() > 0.999


def test_nearest_label_export_roundtrip_integer_factor():
    lab = torch.randint(0, 5, (4, 6, 8), dtype=torch.uint8)
    up = take_nearest(lab, export_samples((4, 6, 8), (8, 18, 16), nearest=True))
    assert torch.equal(take_nearest(up, export_samples((8, 18, 16), (4, 6, 8), nearest=True)), lab)


def test_ct_normalisation_matches_nnunet():
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization
    props = {"mean": 60.0, "std": 45.0, "percentile_00_5": -150.0, "percentile_99_5": 300.0}
    img = np.random.default_rng(1).normal(0, 400, size=(6, 7, 8)).astype(np.float32)
    ref = CTNormalization(intensityproperties=props).run(img.copy())
    ours = normalize_(torch.from_numpy(img.copy()), "CTNormalization", props).numpy()
    assert np.allclose(ours, ref, atol=1e-5)


def test_normalisation_errors():
    with pytest.raises(NotImplementedError):
        normalize_(torch.zeros(3, 3, 3), "RescaleTo01Normalization")
    with pytest.raises(TypeError):
        normalize_(torch.zeros(3, 3, 3, dtype=torch.int16), "CTNormalization", {})
    z = normalize_(torch.arange(27.0).reshape(3, 3, 3), "ZScoreNormalization")
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std(unbiased=False)) - 1) < 1e-5
