"""Context-aware CutMix: paste centres, pasted content, borders, label type, reproducibility."""
from __future__ import annotations

import numpy as np
import pytest

from flareseg.anatomy import abdomen_region, body_mask
from flareseg.config import CutMixConfig
from flareseg.cto.cutmix import (CutMixParams, Paste, apply, label_type_after, paste_boxes,
                                 pasted_tumor_voxels, sample_params)
from flareseg.cto.gallery import cutmix_gallery
from flareseg.cto.pool import CTO
from flareseg.labels import TUMOR

SPACING = (2.5, 1.5, 1.5)
CFG = CutMixConfig(probability=1.0, max_objects=1, abdomen_margin_mm=6.0)


def make_pool() -> dict[str, CTO]:
    rng = np.random.default_rng(3)
    pool = {}
    for i, shape in enumerate([(5, 9, 11), (4, 8, 8), (7, 13, 6)]):
        lab = np.zeros(shape, np.uint8)
        lab[:, : shape[1] // 3] = 3                     # some spleen context
        lab[1:-1, 3:-2, 2:-2] = TUMOR
        img = rng.normal(2.0, 0.5, shape).astype(np.float32)
        pool[f"o{i}"] = CTO(f"o{i}", img, lab, {})
    return pool


def make_sample(channel_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    lab = np.zeros((20, 40, 44), np.int16)
    lab[6:14, 12:26, 20:32] = 1
    lab[8:12, 26:30, 8:14] = 13
    lab[0, 0, :] = -1                                   # nnU-Net's outside-nonzero marker
    img = np.random.default_rng(1).normal(0, 1, lab.shape).astype(np.float32)
    if channel_first:
        return img[None], lab[None]
    return img, lab


def test_centre_always_inside_abdomen_region():
    _, lab = make_sample()
    region = abdomen_region(np.maximum(lab, 0), SPACING, CFG.abdomen_margin_mm)
    assert not region.all()
    pool = make_pool()
    cfg = CutMixConfig(probability=1.0, max_objects=3, abdomen_margin_mm=6.0)
    counts = set()
    for seed in range(300):
        params = sample_params(np.random.default_rng(seed), lab, list(pool), SPACING, cfg)
        assert params.applied and 1 <= len(params.pastes) <= 3
        counts.add(len(params.pastes))
        for p in params.pastes:
            assert region[p.centre] and p.object_id in pool
    assert counts == {1, 2, 3}


def test_centre_inside_body_mask_without_organs():
    img = np.full((12, 30, 30), -1000.0, np.float32)
    img[:, 8:22, 5:25] = 40.0                            # body
    lab = np.zeros(img.shape, np.uint8)
    body = body_mask(img)
    for seed in range(100):
        params = sample_params(np.random.default_rng(seed), lab, ["a"], SPACING, CFG, image=img)
        assert body[params.pastes[0].centre]
    # normalised image: threshold given in the image's units
    norm = (img - 40.0) / 100.0
    params = sample_params(np.random.default_rng(0), lab, ["a"], SPACING, CFG, image=norm,
                           body_threshold=(-500 - 40.0) / 100.0)
    assert body[params.pastes[0].centre]


def test_probability_and_tumor_samples():
    _, lab = make_sample()
    never = CutMixConfig(probability=0.0)
    assert not sample_params(np.random.default_rng(0), lab, ["a"], SPACING, never).applied
    assert not sample_params(np.random.default_rng(0), lab, [], SPACING, CFG).applied
    assert not sample_params(np.random.default_rng(0), lab, ["a"], SPACING, CFG,
                             sample_type=(1, 14)).applied
    half = CutMixConfig(probability=0.5)
    hits = sum(sample_params(np.random.default_rng(s), lab, ["a"], SPACING, half).applied
               for s in range(400))
    assert 140 < hits < 260


@pytest.mark.parametrize("channel_first", [False, True])
def test_pasted_region_equals_cto_and_rest_unchanged(channel_first):
    img, lab = make_sample(channel_first)
    img0, lab0 = img.copy(), lab.copy()
    pool = make_pool()
    params = CutMixParams((Paste("o0", (10, 20, 22)),))
    out_img, out_lab = apply(params, img, lab, pool)
    assert np.array_equal(img, img0) and np.array_equal(lab, lab0)        # inputs untouched
    assert out_img.shape == img.shape and out_img.dtype == img.dtype and out_lab.dtype == lab.dtype
    box = (Ellipsis, slice(8, 13), slice(16, 25), slice(17, 28))           # centre - size // 2
    assert np.array_equal(out_img[box].reshape(pool["o0"].image.shape), pool["o0"].image)
    assert np.array_equal(out_lab[box].reshape(pool["o0"].label.shape), pool["o0"].label)
    outside = np.ones(lab.shape[-3:], bool)
    outside[box[1:]] = False
    assert np.array_equal(out_img[..., outside], img[..., outside])
    assert np.array_equal(out_lab[..., outside], lab[..., outside])
    vox = pasted_tumor_voxels(params, out_lab, pool)
    assert len(vox) == int((pool["o0"].label == TUMOR).sum())
    assert np.all(out_lab.reshape(lab.shape[-3:])[tuple(vox.T)] == TUMOR)


def test_cto_cropped_at_volume_borders():
    img, lab = make_sample()
    pool = make_pool()
    obj = pool["o1"]                                         # (4, 8, 8)
    for centre in [(0, 0, 0), (19, 39, 43), (0, 39, 0)]:
        dst, src = paste_boxes(centre, obj.label.shape, lab.shape)
        out_img, out_lab = apply(CutMixParams((Paste("o1", centre),)), img, lab, pool)
        assert np.array_equal(out_img[dst], obj.image[src])
        assert np.array_equal(out_lab[dst], obj.label[src])
        for d, s, c, n in zip(dst, src, centre, lab.shape):
            assert d.start >= 0 and d.stop <= n and d.stop - d.start == s.stop - s.start
    dst, src = paste_boxes((0, 0, 0), (4, 8, 8), lab.shape)
    assert dst == (slice(0, 2), slice(0, 4), slice(0, 4)) and src == (slice(2, 4), slice(4, 8), slice(4, 8))
    with pytest.raises(ValueError):
        paste_boxes((-10, 0, 0), (4, 8, 8), lab.shape)


def test_keep_classes_masks_unannotated_context():
    img, lab = make_sample()
    pool = make_pool()
    params = CutMixParams((Paste("o0", (10, 20, 22)),))
    _, out = apply(params, img, lab, pool, keep_classes=(1, 13))
    box = (slice(8, 13), slice(16, 25), slice(17, 28))
    assert set(np.unique(out[box]).tolist()) == {0, TUMOR}           # spleen context -> 0
    _, kept = apply(params, img, lab, pool, keep_classes=(1, 3, 13))
    assert 3 in np.unique(kept[box])


def test_label_type_after():
    assert label_type_after((1, 2, 13)) == (1, 2, 13, 14)
    assert label_type_after((1, 2), CutMixParams()) == (1, 2)
    assert label_type_after((), CutMixParams((Paste("a", (0, 0, 0)),))) == (14,)


def _batch(seed: int):
    pool = make_pool()
    rng = np.random.default_rng(seed)
    out = []
    for k in range(4):
        img, lab = make_sample(channel_first=True)
        img = img + k
        params = sample_params(rng, lab, list(pool), SPACING, CFG)
        out.append((params, *apply(params, img, lab, pool)))
    return out


def test_same_seed_same_batch():
    a, b, c = _batch(5), _batch(5), _batch(6)
    for (pa, ia, la), (pb, ib, lb) in zip(a, b):
        assert pa == pb and np.array_equal(ia, ib) and np.array_equal(la, lb)
    assert [p for p, *_ in a] != [p for p, *_ in c]


def test_cutmix_gallery_writes_png(tmp_path):
    tiles = [(f"s{i}", img, lab) for i, (_, img, lab) in enumerate(_batch(0))]
    out = cutmix_gallery(tiles, tmp_path / "cutmix.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
