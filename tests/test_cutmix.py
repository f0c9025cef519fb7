"""Context-aware CutMix: paste centres, pasted content, borders, label type, reproducibility."""
from __future__ import annotations

import numpy as np
import pytest

from flareseg.anatomy import abdomen_region, body_mask
from flareseg.config import CutMixConfig
from flareseg.cto.cutmix import (CutMixParams, ObjectInfo, Paste, apply, fit_centres, label_type_after,
                                 object_infos, outer_air, paste_boxes, sample_body,
                                 sample_params)
from flareseg.cto.gallery import cutmix_gallery
from flareseg.cto.pool import CTO
from flareseg.labels import ORGANS, TUMOR

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


# ------------------------------------------------------------------ issue 16.3: partial sources
KIDNEY_HU, LIVER_HU, TUMOR_HU = 180.0, 60.0, -20.0


def liver_tumor_source():
    """A liver+tumor case (HU): the tumor in the liver, the right kidney right next to it — in the
    image, but label 0 (kidney not annotated in this case)."""
    img = np.full((16, 40, 40), -1000.0, np.float32)
    img[:, 4:36, 4:36] = 20.0                                # body
    lab = np.zeros(img.shape, np.uint8)
    img[3:13, 8:30, 8:20] = LIVER_HU
    lab[3:13, 8:30, 8:20] = 1
    img[5:11, 10:24, 21:29] = KIDNEY_HU                       # kidney: visible, unannotated
    img[6:10, 14:19, 15:20] = TUMOR_HU
    lab[6:10, 14:19, 15:20] = TUMOR
    return img, lab


def full_target():
    """A sample (HU) whose label type claims every organ (no tumor)."""
    img = np.full((24, 60, 60), -1000.0, np.float32)
    img[:, 5:55, 5:55] = 20.0
    lab = np.zeros(img.shape, np.int16)
    lab[4:20, 10:40, 10:30], img[4:20, 10:40, 10:30] = 1, LIVER_HU
    lab[6:16, 20:36, 36:46], img[6:16, 20:36, 36:46] = 2, KIDNEY_HU
    lab[8:14, 42:50, 20:30], img[8:14, 42:50, 20:30] = 3, 110.0
    return img, lab


def _pool_from(img, lab, case_id, partial=True):
    from flareseg.config import CTOConfig
    from flareseg.cto.extract import extract_case
    crops, _ = extract_case(case_id, img, lab, (1.0, 1.0, 1.0),
                            CTOConfig(margin_z=(2, 2), margin_xy=(8, 8), min_voxels=3))
    assert len(crops) == 1
    c = crops[0]
    assert (c.image == KIDNEY_HU).any() and (c.label == 2).any() != partial   # partial: kidney as 0
    return {c.record["id"]: CTO(c.record["id"], c.image, c.label, c.record)}


def test_partial_source_box_asserts_only_classes_annotated_in_both():
    src_img, src_lab = liver_tumor_source()
    pool = _pool_from(src_img, src_lab, "lt")
    infos = object_infos(pool, {"lt": (1, 14)})
    img, lab = full_target()
    sample_type = ORGANS
    hit = 0
    for seed in range(20):
        p = sample_params(np.random.default_rng(seed), lab, list(pool), (1.0, 1.0, 1.0), CFG,
                          image=img, sample_type=sample_type, objects=infos)
        if not p.applied:
            continue
        hit += 1
        out_img, out_lab = apply(p, img, lab, pool)
        t = label_type_after(sample_type, p)
        assert t == (1, TUMOR)                                 # sample type ∩ source type, + tumor
        # no voxel whose image is kidney is labelled background under a type that claims kidney
        kidney_img = out_img == KIDNEY_HU
        assert (kidney_img & (out_lab == 0)).any()             # the source's unannotated kidney...
        assert 2 not in t                                      # ...is not claimed as background
        # the label holds only classes of its type; the sample's own liver is kept
        assert set(np.unique(out_lab).tolist()) - {0} <= set(t)
        outside = np.ones(lab.shape, bool)
        dst, _ = paste_boxes(p.pastes[0].centre, next(iter(pool.values())).label.shape, lab.shape)
        outside[dst] = False
        assert np.array_equal(out_lab[outside & (lab == 1)], lab[outside & (lab == 1)])
    assert hit >= 15


def test_fully_annotated_source_keeps_the_sample_type():
    src_img, src_lab = liver_tumor_source()
    src_lab = src_lab.copy()
    src_lab[(src_img == KIDNEY_HU)] = 2                       # now kidney annotated
    pool = _pool_from(src_img, src_lab, "full", partial=False)
    infos = object_infos(pool, {"full": (*ORGANS, 14)})
    img, lab = full_target()
    p = sample_params(np.random.default_rng(0), lab, list(pool), (1.0, 1.0, 1.0), CFG, image=img,
                      sample_type=ORGANS, objects=infos)
    assert p.applied and p.label_type == (*ORGANS, TUMOR)
    _, out = apply(p, img, lab, pool)
    assert (out == 2).sum() >= (lab == 2).sum() - 1000 and (out == 3).any()   # nothing dropped
    # unknown source: the object asserts only its tumor
    assert object_infos(pool, {})[next(iter(pool))].label_type == (TUMOR,)


# ------------------------------------------------------------------ issue 16.3b: where the box lands
def test_fit_centres_matches_brute_force():
    rng = np.random.default_rng(0)
    body = rng.random((6, 9, 8)) > 0.15
    for shape in [(1, 1, 1), (2, 3, 2), (3, 4, 5)]:
        fit = fit_centres(body, shape)
        for c in np.ndindex(body.shape):
            dst, _ = paste_boxes(c, shape, body.shape)
            assert fit[c] == bool(body[dst].all()), (shape, c)


def test_whole_box_inside_the_body_or_no_paste():
    img, lab = full_target()
    img = img.copy()
    img[:, :, :14] = -1000.0                                  # body edge cuts through the organ box
    lab = lab.copy()
    lab[0, 0, :] = -1                                          # padding marker is not body
    pool = make_pool()
    infos = object_infos(pool, {})
    body = sample_body(lab, img, -500.0)
    cfg = CutMixConfig(probability=1.0, max_objects=3, abdomen_margin_mm=20.0)
    for seed in range(100):
        p = sample_params(np.random.default_rng(seed), lab, list(pool), (1.0, 1.0, 1.0), cfg,
                          image=img, sample_type=(1, 2, 3), objects=infos)
        assert p.applied and p.unplaced == 0
        for q in p.pastes:
            dst, _ = paste_boxes(q.centre, pool[q.object_id].label.shape, lab.shape)
            assert body[dst].all()
    # a body too small for any object: no paste, counted
    tiny = np.full(img.shape, -1000.0, np.float32)
    tiny[10:13, 20:24, 20:24] = 20.0
    p = sample_params(np.random.default_rng(0), lab, list(pool), (1.0, 1.0, 1.0), CFG, image=tiny,
                      sample_type=(1,), objects=infos)
    assert not p.applied and p.no_fit and p.unplaced == 1
    assert label_type_after((1,), p) == (1,)


def test_outer_air_of_the_object_is_not_pasted():
    obj_img = np.full((6, 10, 10), 30.0, np.float32)
    obj_img[:, :, :3] = -1000.0                              # source's outside air at one face
    obj_img[2:4, 4:6, 5:7] = -900.0                           # enclosed gas pocket
    obj_lab = np.zeros(obj_img.shape, np.uint8)
    obj_lab[2:4, 6:9, 5:8] = TUMOR
    air = outer_air(obj_img, obj_lab, -500.0)
    assert air[:, :, :3].all() and not air[2:4, 4:6, 5:7].any() and air.sum() == 6 * 10 * 3
    pool = {"o": CTO("o", obj_img, obj_lab, {})}
    img = np.full((1, 10, 20, 20), 40.0, np.float32)
    lab = np.ones((1, 10, 20, 20), np.int16)
    p = CutMixParams((Paste("o", (5, 10, 10)),), label_type=(1, TUMOR))
    out_img, out_lab = apply(p, img, lab, pool, air_threshold=-500.0)
    box = (0, slice(2, 8), slice(5, 15), slice(5, 15))
    assert not (out_img[box][air] < -500).any()               # target tissue kept there
    assert (out_lab[box][air] == 1).all()
    assert (out_img[box] == -900.0).sum() == (obj_img == -900.0).sum() == 8   # enclosed pocket pasted
    assert (out_lab[box] == TUMOR).sum() == (obj_lab == TUMOR).sum()


def test_same_seed_same_params_with_objects():
    img, lab = full_target()
    pool = make_pool()
    infos = {k: ObjectInfo(v.label.shape, (1, 3, TUMOR)) for k, v in pool.items()}
    cfg = CutMixConfig(probability=1.0, max_objects=3, abdomen_margin_mm=10.0)
    run = [sample_params(np.random.default_rng(s), lab, list(pool), (1.0, 1.0, 1.0), cfg, image=img,
                         sample_type=ORGANS, objects=infos) for s in (4, 4, 5)]
    assert run[0] == run[1] and run[0] != run[2]
    assert run[0].label_type == (1, 3, TUMOR)
