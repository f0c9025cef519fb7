"""Elastic deformation (issue 28 item 2): the paper's augmentation switched on in nnU-Net's own
training transforms; a deformed sample differs from the input and its labels move with its image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flareseg.config import ElasticConfig, TrainConfig, load_config, to_dict
from flareseg.nnunet.augmentation import SigmaFraction, spatial_transforms, with_elastic

PATCH = (16, 32, 32)


def stock_transforms():
    """nnU-Net 2.8.1's training transforms for a 3D patch (no deep supervision, no mirroring)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    rot = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    return nnUNetTrainer.get_training_transforms(PATCH, rot, None, (), False, foreground_labels=(1, 2, 3))


def blobs(shape=(24, 48, 48), seed=0) -> np.ndarray:
    """A label map of a few ellipsoids (classes 1-3) on background."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    lab = np.zeros(shape, np.int16)
    for c in (1, 2, 3, 1, 2):
        cz, cy, cx = (rng.uniform(0.25, 0.75) * s for s in shape)
        rz, ry, rx = rng.uniform(3, 6), rng.uniform(5, 12), rng.uniform(5, 12)
        lab[((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] = c
    return lab


def spatial_only(elastic: dict | None, nearest: bool):
    """The stock pipeline's spatial transform with elastic settings, rotation and scaling off (the
    deformation alone); ``nearest``: order-0 interpolation of image and labels."""
    tf = with_elastic(stock_transforms(), elastic)
    (sp,) = list(spatial_transforms(tf))
    sp.p_rotation = sp.p_scaling = 0.0
    if nearest:
        sp.mode_image = sp.mode_seg = "nearest"
    return sp


def run(sp, image: np.ndarray, seg: np.ndarray, seed: int):
    np.random.seed(seed)
    torch.manual_seed(seed)
    out = sp(image=torch.from_numpy(image[None].astype(np.float32)), segmentation=torch.from_numpy(seg[None]))
    return out["image"][0].numpy(), out["segmentation"][0].numpy()


def centre_crop(a: np.ndarray) -> np.ndarray:
    sl = tuple(slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(a.shape, PATCH))
    return a[sl]


ON = {"probability": 1.0, "sigma": [3.0, 4.0], "magnitude": [3.0, 4.0]}


def test_deformed_sample_differs_and_labels_move_with_the_image():
    lab = blobs()
    img = lab.astype(np.float32)          # intensity = label: alignment is checkable voxel by voxel
    sp = spatial_only(ON, nearest=True)
    for seed in range(3):
        out_img, out_seg = run(sp, img, lab, seed)
        inside = out_seg >= 0             # the label's padding (-1) beyond the crop
        assert inside.mean() > 0.9
        np.testing.assert_array_equal(out_img[inside], out_seg[inside])   # same displacement for both
        moved = (out_seg != centre_crop(lab)) & inside
        assert moved.mean() > 0.02, moved.mean()                          # really deformed
        assert set(np.unique(out_seg[inside])) <= {0, 1, 2, 3}


def test_stock_interpolation_keeps_labels_on_their_image():
    """With nnU-Net's own modes (image bilinear, labels by interpolated one-hot), the label of a
    voxel is the class whose intensity the deformed image shows there (boundary voxels aside)."""
    lab = blobs(seed=1)
    img = 100.0 * lab
    sp = spatial_only(ON, nearest=False)
    from scipy.ndimage import maximum_filter, minimum_filter
    out_img, out_seg = run(sp, img, lab, 7)
    inside = out_seg >= 0
    interior = inside & (maximum_filter(out_seg, 3) == minimum_filter(out_seg, 3))   # off label edges
    agree = np.abs(out_img - 100.0 * out_seg) < 50
    assert interior.mean() > 0.5 and agree[interior].mean() > 0.995
    assert (out_seg[inside] != centre_crop(lab)[inside]).mean() > 0.02
    # a label map one sample out of step with its image would not agree there
    _, other = run(sp, img, lab, 8)
    assert (np.abs(out_img - 100.0 * other) < 50)[interior & (other >= 0)].mean() < 0.97


def test_probability_zero_is_nnunets_stock_crop():
    lab = blobs(seed=2)
    for elastic in ({**ON, "probability": 0.0}, None):
        sp = spatial_only(elastic, nearest=True)
        out_img, out_seg = run(sp, lab.astype(np.float32), lab, 3)
        np.testing.assert_array_equal(out_seg, centre_crop(lab))
    assert list(spatial_transforms(stock_transforms()))[0].p_elastic_deform == 0   # stock: off


def test_sigma_is_voxels_along_every_axis():
    f = SigmaFraction((9.0, 13.0))
    np.random.seed(0)
    for dim, edge in enumerate((32, 192, 192)):
        s = f(dim=dim, patch_size=(32, 192, 192)) * edge
        assert 9.0 <= s <= 13.0


def test_config_carries_the_papers_setting_and_the_demo_turns_it_off():
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    for name in ("default.yaml", "flare23.yaml"):
        cfg = load_config(repo / "configs" / name)
        for tc in (cfg.train_fine, cfg.train_coarse):
            assert tc.elastic == ElasticConfig() and tc.elastic.probability == 0.2
    demo = load_config(repo / "configs" / "demo.yaml")
    assert demo.train_fine.elastic.probability == 0.0 == demo.train_coarse.elastic.probability
    # the plans entry the trainer reads holds the settings
    assert to_dict(TrainConfig())["elastic"] == {"probability": 0.2, "sigma": [9.0, 13.0], "magnitude": [0.0, 6.0]}


def test_bad_elastic_values_name_the_key(tmp_path):
    from flareseg.config import ConfigError
    with pytest.raises(ConfigError, match="train_fine.elastic.probability"):
        load_config(None, ["train_fine.elastic.probability=1.5"])
    with pytest.raises(ConfigError, match="train_coarse.elastic"):
        load_config(None, ["train_coarse.elastic.sigmas=[1, 2]"])
