"""Issue 25: CutMix pastes at every shipped geometry, its body/air masks come from HU, and a run
that pastes too rarely is flagged."""
from __future__ import annotations

import numpy as np
import pytest

from flareseg.anatomy import body_mask, outer_air
from flareseg.config import CTOConfig, CutMixConfig, load_config
from flareseg.cto.cutmix import (CONTEXT_STEPS, ObjectInfo, apply, central_box, paste_rate_warning,
                                 sample_params, trimmed_box)
from flareseg.cto.extract import margin_ranges
from flareseg.cto.pool import CTO
from flareseg.labels import ORGANS, TUMOR
from flareseg.nnunet.plans import above_clip_floor


def test_margins_keep_the_papers_numbers_at_its_patch_and_scale_to_smaller_patches():
    cfg = CTOConfig()
    assert margin_ranges(cfg, (32, 192, 192)) == ((8, 16), (24, 32), (24, 32))
    demo = load_config("configs/demo.yaml")
    assert margin_ranges(demo.cto, demo.coarse.patch_size) == ((4, 8), (6, 8), (6, 8))
    assert margin_ranges(CTOConfig(margin_patch=None), (16, 48, 48)) == ((8, 16), (24, 32), (24, 32))
    assert margin_ranges(cfg) == ((8, 16), (24, 32), (24, 32))      # no patch known: as configured


def _ct_norm(lower: float, upper: float, mean: float, std: float):
    return lambda x: (np.clip(np.asarray(x, np.float32), lower, upper) - mean) / std


def test_body_threshold_stays_above_the_clip_floor():
    """The demo plans clip at -118 HU: -500 HU and air normalise to the floor; the threshold must
    separate tissue above the floor from the floor (issue 25), and stay norm(-500) otherwise."""
    norm = _ct_norm(-118.0, 300.0, 60.0, 54.0)
    t = above_clip_floor(norm, -118.0)
    hu = np.array([-1000.0, -500.0, -118.0, -100.0, 40.0], np.float32)
    assert list(norm(hu) > t) == [False, False, False, True, True]
    assert float(norm(np.float32(-500.0))) == float(norm(np.float32(-1000.0)))   # the collapse
    wide = _ct_norm(-1000.0, 1000.0, 0.0, 100.0)
    assert above_clip_floor(wide, -1000.0) == pytest.approx(-5.0)


def test_outer_air_is_found_in_hu_where_normalised_values_cannot_tell_fat_from_air():
    hu = np.full((6, 12, 12), 40.0, np.float32)
    hu[:, :, :3] = -1000.0                                   # outside air at one face
    hu[:, :, 3:5] = -110.0                                   # fat: above the floor
    hu[:, :, 5] = -130.0                                     # fat below the floor
    lab = np.zeros(hu.shape, np.uint8)
    lab[2:4, 5:9, 7:10] = TUMOR
    norm = _ct_norm(-118.0, 300.0, 60.0, 54.0)
    t = above_clip_floor(norm, -118.0)
    assert not (norm(hu) < norm(np.float32(-500.0))).any()     # the old threshold found no air at all
    air = outer_air(hu < -500.0, lab)
    assert air[:, :, :3].all() and not air[:, :, 3:].any()
    assert (norm(hu) <= t)[:, :, :3].all()


def test_central_box_is_where_nnunet_cuts_the_patch():
    assert central_box((44, 77, 58), (16, 48, 48)) == (slice(14, 30), slice(14, 62), slice(5, 53))
    assert central_box((10, 20, 20), (16, 48, 48)) == (slice(0, 10), slice(0, 20), slice(0, 20))


def _object(shape=(9, 21, 21), tumor=((3, 6), (8, 13), (8, 13))) -> tuple[CTO, ObjectInfo]:
    lab = np.zeros(shape, np.uint8)
    lab[:, :4] = 3
    lab[tuple(slice(a, b) for a, b in tumor)] = TUMOR
    img = np.full(shape, 1.0, np.float32)
    air = np.zeros(shape, bool)
    air[:, :, :2] = True                                     # outer air at one face
    return CTO("o", img, lab, {}, air), ObjectInfo(shape, (3, TUMOR), tumor)


def test_trimmed_box_keeps_the_tumor_and_a_fraction_of_the_context():
    _, info = _object()
    assert trimmed_box(info, 1.0) == ((0, 9), (0, 21), (0, 21))
    assert trimmed_box(info, 0.0) == ((3, 6), (8, 13), (8, 13))
    assert trimmed_box(info, 0.5) == ((1, 8), (4, 17), (4, 17))
    assert CONTEXT_STEPS[0] == 1.0 and CONTEXT_STEPS[-1] == 0.0


def test_an_object_larger_than_the_body_is_pasted_with_less_context_inside_the_body():
    obj, info = _object()
    img = np.full((12, 30, 30), -3.0, np.float32)              # air (normalised)
    img[:, 8:22, 8:22] = 1.0                                 # a body 14 x 14 in-plane: object is 21
    lab = np.zeros(img.shape, np.int16)
    lab[:, 10:20, 10:20] = 1
    pasted = 0
    for seed in range(20):
        p = sample_params(np.random.default_rng(seed), lab, ["o"], (1.0, 1.0, 1.0), CutMixConfig(),
                          image=img, sample_type=ORGANS, body_threshold=0.0, objects={"o": info})
        assert p.applied and p.pastes[0].box is not None        # trimmed, not dropped
        out_img, out_lab = apply(p, img, lab, {"o": obj})
        body = body_mask(img, 0.0)
        changed = (out_img != img) | (out_lab != lab)
        assert not (changed & ~body).any()                   # nothing lands outside the body
        assert 0 < (out_lab == TUMOR).sum() <= 3 * 5 * 5      # the tumor (cut only at the array border)
        pasted += 1
    assert pasted == 20


def test_nothing_is_pasted_beyond_the_scan():
    """A short scan's crop is padded along z (label -1): the box may reach into the padding, like
    the array border, but nothing is written there."""
    obj, info = _object(shape=(9, 9, 9), tumor=((3, 6), (3, 6), (3, 6)))
    img = np.full((14, 20, 20), 1.0, np.float32)
    lab = np.ones(img.shape, np.int16)
    lab[:3] = -1
    img[:3] = 0.0
    for seed in range(10):
        p = sample_params(np.random.default_rng(seed), lab, ["o"], (1.0, 1.0, 1.0), CutMixConfig(),
                          image=img, sample_type=ORGANS, body_threshold=0.5, objects={"o": info})
        assert p.applied
        out_img, out_lab = apply(p, img, lab, {"o": obj})
        assert (out_lab[:3] == -1).all() and (out_img[:3] == 0).all()


def test_paste_rate_warning():
    assert paste_rate_warning({"eligible": 100, "pasted": 9, "no_fit": 91}) is not None
    assert "9 of 100" in paste_rate_warning({"eligible": 100, "pasted": 9, "no_fit": 91})
    assert paste_rate_warning({"eligible": 100, "pasted": 0}) is not None
    assert paste_rate_warning({"eligible": 100, "pasted": 10}) is None
    assert paste_rate_warning({"eligible": 0, "pasted": 0}) is None
    assert paste_rate_warning(None) is None
    assert paste_rate_warning({"eligible": 100, "pasted": 0, "probability": 0.0}) is None   # CutMix off
    assert paste_rate_warning({"eligible": 100, "pasted": 4, "probability": 0.5}) is not None
    assert paste_rate_warning({"eligible": 100, "pasted": 5, "probability": 0.5}) is None


def test_cutmix_counts_count_each_epoch_once_across_a_resume(tmp_path):
    from flareseg.nnunet.trainer import record_cutmix_epoch
    c = {"samples": 10, "eligible": 6, "pasted": 5, "reached_patch": 4, "no_fit": 1}
    for e in range(3):
        record_cutmix_epoch(str(tmp_path), e, c)
    rec = record_cutmix_epoch(str(tmp_path), 1, c)           # resumed from epoch 1's checkpoint
    assert rec["total"]["pasted"] == 10 and sorted(rec["epochs"]) == ["0", "1"]


@pytest.mark.parametrize("config, min_rate", [("configs/demo.yaml", 0.5), ("configs/tiny.yaml", 0.5)])
def test_shipped_geometry_pastes_on_the_trainers_patches(tmp_path, config, min_rate):
    """The demo pasted into 0 of 5000 samples (issue 25).  At the config's geometry, on the trainer's
    pre-augmentation crops, through the trainer's own hook and nnU-Net's transforms, most eligible
    samples get a paste, it reaches the final patch, and almost no air is carried."""
    from bench.cutmix_rate import measure
    r = measure(config, tmp_path, crops=3, seed=0, small=True)
    assert r["eligible"] >= 10
    assert r["pasted"] >= min_rate * r["eligible"], r
    assert r["reached_patch"] >= 0.5 * r["pasted"], r
    assert r["air_fraction"] < 0.02, r
