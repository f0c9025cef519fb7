"""CTO extraction and pool: components, margins, crops, filters, index, storage, real tumor shapes."""
from __future__ import annotations

import dataclasses
import json
import pickle

import cc3d
import numpy as np
import pytest

from flareseg.anatomy import abdomen_region
from flareseg.config import CTOConfig
from flareseg.cto.extract import (crop_object, extract_case, find_tumor_objects, organ_distance_mm,
                                  sample_margins)
from flareseg.cto.gallery import cto_gallery, tumor_slice
from flareseg.cto.pool import build_pool, load_pool, resampled_shape
from flareseg.io import InputError, read_array
from flareseg.labels import TUMOR

SPACING = (2.5, 1.5, 1.5)
LOOSE = CTOConfig(margin_z=(2, 4), margin_xy=(5, 8), min_voxels=1, exclude_outside_abdomen=False)


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """(24, 48, 48) CT-like image and label: liver, kidney, four tumors (touching, near, tiny, far)."""
    lab = np.zeros((24, 48, 48), np.uint8)
    lab[6:18, 10:30, 10:30] = 1                 # liver
    lab[8:16, 30:40, 30:38] = 2                 # right kidney
    lab[10:13, 14:20, 14:20] = TUMOR            # inside the liver (touches 1)
    lab[10:12, 32:36, 38:41] = TUMOR            # touching kidney from the +x side
    lab[12, 5, 5] = TUMOR                       # tiny, 3 mm from nothing: near liver box corner
    lab[0:2, 45:48, 45:48] = TUMOR              # far corner: outside the abdomen, at the border
    rng = np.random.default_rng(0)
    img = rng.normal(0, 20, lab.shape).astype(np.float32) + 40 * lab
    return img, lab


def test_each_component_found_once_and_matches_cc3d():
    _, lab = phantom()
    comps = find_tumor_objects(lab, 26)
    ref, n = cc3d.connected_components(lab == TUMOR, connectivity=26, return_N=True)
    assert len(comps) == n == 4
    union = np.zeros(lab.shape, np.int32)
    for c in comps:
        union[c.bbox] += c.mask
        assert c.voxels == int(c.mask.sum())
    assert np.array_equal(union, (lab == TUMOR).astype(np.int32))


def test_connectivity_changes_components():
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[1, 1, 1] = lab[2, 2, 2] = TUMOR         # corner neighbours only
    assert len(find_tumor_objects(lab, 26)) == 1
    assert len(find_tumor_objects(lab, 18)) == 2
    assert len(find_tumor_objects(lab, 6)) == 2
    assert find_tumor_objects(np.zeros((3, 3, 3), np.uint8)) == []


def test_margins_in_range_and_cover_range():
    cfg = CTOConfig()
    m = sample_margins(np.random.default_rng(1), 500, cfg)
    assert m.shape == (500, 3, 2)
    assert m[:, 0].min() == 8 and m[:, 0].max() == 16
    assert m[:, 1:].min() == 24 and m[:, 1:].max() == 32
    with pytest.raises(ValueError):
        sample_margins(np.random.default_rng(1), 2, CTOConfig(margin_z=(5, 3)))


def test_crop_contains_component_and_is_clipped_at_borders():
    img, lab = phantom()
    comps = find_tumor_objects(lab)
    margins = np.array([[3, 4], [5, 6], [7, 8]])
    for c in comps:
        ic, lc, box = crop_object(img, lab, c.bbox, margins)
        assert np.array_equal(lc, lab[box]) and np.array_equal(ic, img[box])
        for s, b, (a, z), n in zip(c.bbox, box, margins, lab.shape):
            assert b.start <= s.start and b.stop >= s.stop           # whole component inside
            assert b.start == max(0, s.start - a) and b.stop == min(n, s.stop + z)
    corner = [c for c in comps if c.bbox[0].start == 0][0]
    _, lc, box = crop_object(img, lab, corner.bbox, margins)
    assert box[0].start == 0 and box[1].stop == 48 and box[2].stop == 48
    ic, _, _ = crop_object(img, lab, comps[0].bbox, margins)
    ic[...] = -1                                                     # crops are copies
    assert img.min() > -1000 and (img != -1).any()


def test_extract_case_records_and_filters():
    img, lab = phantom()
    crops, rejected = extract_case("c1", img, lab, SPACING, LOOSE)
    assert len(crops) == 4 and rejected == []
    recs = {r.record["component"]: r.record for r in crops}
    comps = {c.index: c for c in find_tumor_objects(lab)}
    for k, rec in recs.items():
        assert rec["id"] == f"c1_t{k:03d}" and rec["case_id"] == "c1"
        assert rec["voxels"] == comps[k].voxels
        assert rec["volume_mm3"] == pytest.approx(comps[k].voxels * 2.5 * 1.5 * 1.5)
        assert rec["bbox"] == [[s.start, s.stop] for s in comps[k].bbox]
        json.dumps(rec)
    by_size = sorted(recs.values(), key=lambda r: r["voxels"])
    tiny = by_size[0]
    assert tiny["voxels"] == 1 and tiny["organs_touched"] == []
    in_liver = [r for r in recs.values() if r["bbox"][1] == [14, 20]][0]
    assert in_liver["organs_touched"] == [1] and in_liver["organ_distance_mm"] == 0.0
    by_kidney = [r for r in recs.values() if r["bbox"][2] == [38, 41]][0]
    assert by_kidney["organs_touched"] == [2]
    # tiny tumor at (12, 5, 5): nearest liver voxel (12, 10, 10): sqrt(2) * 5 * 1.5 mm
    assert tiny["organ_distance_mm"] == pytest.approx(np.hypot(7.5, 7.5))
    far = [r for r in recs.values() if r["bbox"][0] == [0, 2]][0]
    assert far["organ_distance_mm"] is None                        # no organ inside its crop

    strict = dataclasses.replace(LOOSE, min_voxels=10, exclude_outside_abdomen=True)
    crops, rejected = extract_case("c1", img, lab, SPACING, strict, abdomen_margin_mm=5.0)
    reasons = sorted(r["reason"] for r in rejected)
    assert len(crops) == 2 and len(rejected) == 2
    assert reasons[0].startswith("fewer than") and reasons[1] == "outside the abdominal region"
    # no organs and a flat image (empty body mask): the abdomen filter cannot apply, nothing dropped
    no_organs = np.where(lab == TUMOR, lab, 0)
    kept, dropped = extract_case("c1", np.zeros(lab.shape), no_organs, SPACING, strict)
    assert [r["reason"] for r in dropped] == ["fewer than 10 voxels"] and len(kept) == 3
    region = abdomen_region(lab, SPACING, 5.0)
    for c in crops:
        lo = [a for a, _ in c.record["bbox"]]
        assert region[tuple(lo)]
    # extent filter: the 3x6x6 tumor is 7.5 x 9 x 9 mm; a 4-voxel patch at 1.5 mm is 6 mm wide
    crops, rejected = extract_case("c1", img, lab, SPACING, LOOSE, patch_extent_mm=(100, 6, 100))
    assert in_liver["id"] in {r["id"] for r in rejected}
    assert all("extent" in r["reason"] for r in rejected)


def test_other_tumor_in_box_is_kept():
    lab = np.zeros((10, 30, 30), np.uint8)
    lab[4:6, 5:8, 5:8] = TUMOR
    lab[4:6, 12:14, 12:14] = TUMOR
    crops, _ = extract_case("x", np.zeros(lab.shape, np.float32), lab, (1, 1, 1), LOOSE)
    assert len(crops) == 2
    for c in crops:
        assert int((c.label == TUMOR).sum()) > c.record["voxels"]   # the neighbour is in the box


def test_organ_distance_none_touching():
    lab = np.zeros((3, 3, 3), np.uint8)
    comp = np.zeros(lab.shape, bool)
    comp[1, 1, 1] = True
    assert organ_distance_mm(lab, comp, (1, 1, 1), touching=True) == 0.0
    assert organ_distance_mm(lab, comp, (1, 1, 1), touching=False) is None


def _cases(n=3):
    img, lab = phantom()
    for i in range(n):
        yield f"case{i}", np.roll(img, i, axis=2), np.roll(lab, i, axis=2), SPACING


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x - 10.0) / 50.0


def test_build_pool_deterministic_and_loadable(tmp_path):
    target = (3.0, 2.0, 2.0)
    idx_a = build_pool(_cases(), tmp_path / "a", LOOSE, target, _normalize, progress=False)
    idx_b = build_pool(_cases(), tmp_path / "b", LOOSE, target, _normalize, progress=False)
    idx_c = build_pool(_cases(), tmp_path / "c", dataclasses.replace(LOOSE, seed=7), target,
                       _normalize, progress=False)
    assert idx_a["objects"] == idx_b["objects"] and len(idx_a["objects"]) >= 9
    assert [o["margins"] for o in idx_a["objects"]] != [o["margins"] for o in idx_c["objects"]]
    pa, pb = load_pool(tmp_path / "a"), load_pool(tmp_path / "b")
    assert json.loads((tmp_path / "a" / "index.json").read_text())["objects"] == idx_a["objects"]
    assert len(pa) == len(idx_a["objects"]) and pa.spacing_zyx == target
    for oid in pa.ids:
        a, b = pa[oid], pb[oid]
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
        rec = pa.records[oid]
        lo = [s for s, _ in rec["crop_bbox"]]
        hi = [e for _, e in rec["crop_bbox"]]
        assert a.label.shape == resampled_shape(np.subtract(hi, lo), SPACING, target)
        assert a.image.dtype == np.float32 and a.label.dtype == np.uint8
        assert (a.label == TUMOR).any()
    assert pa[pa.ids[0]] is pa[pa.ids[0]]                         # cached
    assert pa.ids[0] in pa and "nope" not in pa
    clone = pickle.loads(pickle.dumps(pa))                        # data-loader workers
    assert np.array_equal(clone[pa.ids[-1]].label, pa[pa.ids[-1]].label)


def test_pool_normalises_before_storing(tmp_path):
    lab = np.zeros((8, 20, 20), np.uint8)
    lab[3:5, 8:12, 8:12] = TUMOR
    img = np.full(lab.shape, 60.0, np.float32)
    build_pool([("k", img, lab, (1, 1, 1))], tmp_path, LOOSE, (1, 1, 1), _normalize, progress=False)
    obj = load_pool(tmp_path)["k_t001"]
    assert np.allclose(obj.image, 1.0)                            # (60 - 10) / 50


def test_pool_case_error_recorded_and_others_continue(tmp_path):
    img, lab = phantom()
    cases = [("bad", img[:, :10], lab, SPACING), ("good", img, lab, SPACING)]
    idx = build_pool(cases, tmp_path, LOOSE, SPACING, _normalize, progress=False)
    assert [e["case_id"] for e in idx["errors"]] == ["bad"] and "bad" in idx["errors"][0]["error"]
    assert {o["case_id"] for o in idx["objects"]} == {"good"}
    with pytest.raises(InputError, match="index.json"):
        load_pool(tmp_path / "missing")


def test_cto_gallery_writes_png(tmp_path):
    build_pool(_cases(1), tmp_path, LOOSE, SPACING, _normalize, progress=False)
    out = cto_gallery(load_pool(tmp_path), tmp_path / "qc" / "ctos.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# --------------------------------------------------------------------- real KiTS19 tumor shapes

@pytest.fixture(scope="module")
def kits(shared_data):
    """The three KiTS19 label maps as FLARE labels (kidney 1 -> 2, tumor 2 -> 14), read once."""
    lut = np.array([0, 2, TUMOR], np.uint8)
    out = []
    for i in range(3):
        arr, geo = read_array(shared_data / "labels" / f"kits19_case_0000{i}_segmentation.nii.gz")
        out.append((f"kits{i}", lut[arr], geo.spacing_zyx))
    return out


def test_kits_one_object_per_component(kits):
    for case_id, lab, spacing in kits:
        image = np.broadcast_to(np.int16(0), lab.shape)          # no CT: zeros, no memory
        n = cc3d.connected_components(lab == TUMOR, connectivity=26, return_N=True)[1]
        crops, rejected = extract_case(case_id, image, lab, spacing, CTOConfig())
        assert len(crops) == n and rejected == [], case_id
        for c in crops:
            rec = c.record
            box = tuple(slice(a, b) for a, b in rec["crop_bbox"])
            assert np.array_equal(c.label, lab[box])
            # the whole component lies inside the crop: its voxels there equal its voxel count
            ccs = cc3d.connected_components(c.label == TUMOR, connectivity=26)
            assert rec["voxels"] in np.bincount(ccs.ravel())[1:]
            assert 2 in rec["organs_touched"] and rec["organ_distance_mm"] == 0.0
            for (s, e), (a, b), (ml, mh), dim in zip(rec["bbox"], rec["crop_bbox"], rec["margins"],
                                                     lab.shape):
                assert a == max(0, s - ml) and b == min(dim, e + mh)


def test_gallery_slice_shows_tumor_when_two_tumors_share_a_crop():
    lab = np.zeros((20, 8, 8), dtype=np.uint8)
    lab[2:5, 2:4, 2:4] = 14        # tumor near the top of the crop
    lab[14:17, 3:6, 3:6] = 14      # a bigger one near the bottom: middle of the z-extent (9) has none
    z = tumor_slice(lab)
    assert (lab[z] == 14).sum() == 9
    assert tumor_slice(np.zeros((6, 4, 4), dtype=np.uint8)) == 3


# --------------------------------------------------------------- the pool obeys stage-4 cleaning

def _cleaning_scene() -> tuple[np.ndarray, np.ndarray]:
    """(24, 40, 80) at SPACING: liver and spleen 60 mm apart; a 150-voxel tumor in the liver, a
    50-voxel tumor speck touching the liver, and a 128-voxel tumor 30 mm from both organs but inside
    their bounding box (only the distance rule removes it)."""
    lab = np.zeros((24, 40, 80), np.uint8)
    lab[4:20, 10:30, 5:20] = 1                   # liver, x 5..19
    lab[4:20, 10:30, 60:75] = 3                  # spleen, x 60..74
    lab[10:15, 15:20, 8:14] = TUMOR              # 150 voxels inside the liver: kept
    lab[10:12, 30:35, 10:15] = TUMOR             # 50 voxels, face-adjacent to the liver: a speck
    lab[8:16, 16:24, 39:41] = TUMOR              # 128 voxels; 20 voxels x 1.5 mm = 30 mm to each organ
    img = np.where(lab > 0, 60.0, 0.0).astype(np.float32)
    return img, lab


def test_pool_leaves_out_tumors_that_cleaning_removes(tmp_path):
    from flareseg.cleaning import clean_label
    from flareseg.config import CleaningConfig
    img, lab = _cleaning_scene()
    cfg, rules = CTOConfig(margin_z=(1, 2), margin_xy=(2, 4)), CleaningConfig()
    # the pool's own filters (10 voxels, abdominal region) let the speck and the far tumor through
    assert cfg.min_voxels < 50 and cfg.exclude_outside_abdomen
    idx = build_pool([("c", img, lab, SPACING)], tmp_path / "a", cfg, SPACING, _normalize,
                     progress=False, cleaning=rules)
    assert [o["bbox"] for o in idx["objects"]] == [[[10, 15], [15, 20], [8, 14]]]
    reasons = sorted((r["reason"], r["voxels"]) for r in idx["rejected"])
    assert reasons == [("cleaning: far_from_organs", 128), ("cleaning: small_component", 50)]
    far = [r for r in idx["rejected"] if r["reason"].endswith("far_from_organs")][0]
    assert far["bbox"] == [[8, 16], [16, 24], [39, 41]] and far["distance_mm"] is None  # none in 20 mm
    # the object and its context are exactly stage-4's cleaned label in the crop box
    cleaned, _ = clean_label(lab, SPACING, rules, image=img)
    pool = load_pool(tmp_path / "a")
    for oid in pool.ids:
        box = tuple(slice(a, b) for a, b in pool.records[oid]["crop_bbox"])
        assert np.array_equal(pool[oid].label, cleaned[box])
    assert idx["cleaning"]["max_organ_distance_mm"] == rules.max_organ_distance_mm
    # same config -> same pool
    again = build_pool([("c", img, lab, SPACING)], tmp_path / "b", cfg, SPACING, _normalize,
                       progress=False, cleaning=rules)
    assert again["objects"] == idx["objects"] and again["rejected"] == idx["rejected"]
    # the rules follow the cleaning keys: a larger D keeps the far tumor, min_voxels 10 the speck
    loose = dataclasses.replace(rules, max_organ_distance_mm=31.0, min_voxels=10)
    idx = build_pool([("c", img, lab, SPACING)], tmp_path / "c", cfg, SPACING, _normalize,
                     progress=False, cleaning=loose)
    assert sorted(o["voxels"] for o in idx["objects"]) == [50, 128, 150]


def test_stage3_reruns_when_cleaning_keys_change():
    from flareseg.pipeline.registry import STAGES
    assert "cleaning" in STAGES[3].sections and STAGES[3].reads == (1, 2)   # not stage-4's outputs


def test_float_label_is_cleaned_as_integers():
    img, lab = _cleaning_scene()
    from flareseg.config import CleaningConfig
    crops, rejected = extract_case("c", img, lab.astype(np.float32), SPACING, LOOSE,
                                   cleaning=CleaningConfig())
    assert len(crops) == 1 and len(rejected) == 2
    with pytest.raises(ValueError, match="whole class numbers"):
        extract_case("c", img, lab + np.float32(0.5), SPACING, LOOSE, cleaning=CleaningConfig())


# ------------------------------------------------------------- context margins in physical units

def _slab_scene(slice_mm: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One 80 mm-tall scene sampled with ``slice_mm`` slices (1.5 mm in plane): a liver at
    z 20-60 mm and an 8 mm-tall tumor inside it at z 36-44 mm."""
    nz = int(round(80 / slice_mm))
    z = (np.arange(nz) + 0.5) * slice_mm
    lab = np.zeros((nz, 40, 40), np.uint8)
    lab[(z >= 20) & (z < 60), 5:35, 5:25] = 1
    lab[(z >= 36) & (z < 44), 12:20, 10:18] = TUMOR
    return np.where(lab > 0, 60.0, 0.0).astype(np.float32), lab, (slice_mm, 1.5, 1.5)


def test_margins_to_source_keeps_millimetres():
    from flareseg.cto.extract import margins_to_source
    m = np.array([[[8, 16], [24, 32], [24, 32]]])
    assert np.array_equal(margins_to_source(m, (2.5, 0.8, 0.8), (2.5, 0.8, 0.8)), m)
    src = margins_to_source(m, (2.5, 0.8, 0.8), (0.5, 1.6, 0.7))
    assert src[0, 0].tolist() == [40, 80] and src[0, 1].tolist() == [12, 16]
    assert src[0, 2].tolist() == [27, 37]                        # 27.43 -> 27, 36.57 -> 37
    assert margins_to_source(np.array([[[1, 3], [0, 0], [0, 0]]]), (2.0, 1, 1), (4.0, 1, 1))[0, 0].tolist() == [1, 2]
    with pytest.raises(ValueError):
        margins_to_source(m, (2.5, 0.8, 0.8), (0.0, 1, 1))


def test_context_has_the_same_size_in_mm_for_thin_and_thick_slices(tmp_path):
    target = (2.5, 1.5, 1.5)                                     # the coarse spacing
    cfg = CTOConfig(margin_z=(2, 6), margin_xy=(3, 5), seed=3)
    ctx, recs = {}, {}
    for mm in (0.5, 4.0):
        img, lab, spacing = _slab_scene(mm)
        idx = build_pool([("c", img, lab, spacing)], tmp_path / str(mm), cfg, target, _normalize,
                         progress=False)
        (recs[mm],) = idx["objects"]
        ctx[mm] = np.array([[(b0 - c0) * s, (c1 - b1) * s] for (b0, b1), (c0, c1), s
                            in zip(recs[mm]["bbox"], recs[mm]["crop_bbox"], spacing)])
    # same case id and seed: the same draw; z context per side in mm agrees within a thick slice
    assert np.all(np.abs(ctx[0.5] - ctx[4.0]) <= 4.0), (ctx[0.5], ctx[4.0])
    assert np.array_equal(ctx[0.5][1:], ctx[4.0][1:])            # same in-plane spacing: equal
    for mm, rec in recs.items():
        drawn = np.array(rec["margins_drawn"]) * np.array(target)[:, None]
        assert np.all(drawn[0] >= 5.0) and np.all(drawn[0] <= 15.0)   # 2..6 coarse voxels
        # each side: the drawn coarse voxels in mm, within half a source voxel
        half = np.array(rec["source_spacing_zyx"])[:, None] / 2
        assert np.all(np.abs(ctx[mm] - drawn) <= half + 1e-9), mm
        assert rec["context_mm"] == ctx[mm].round(3).tolist()


def test_kits_objects_are_cut_from_the_cleaned_label_with_coarse_margins(kits):
    from flareseg.cleaning import clean_label
    from flareseg.config import CleaningConfig
    case_id, lab, spacing = kits[2]
    image = np.broadcast_to(np.int16(0), lab.shape)
    coarse, rules = (2.5, 1.5, 1.5), CleaningConfig()
    crops, rejected = extract_case(case_id, image, lab, spacing, CTOConfig(),
                                   margin_spacing_zyx=coarse, cleaning=rules)
    cleaned, removals = clean_label(lab, spacing, rules)
    assert len(crops) == len(find_tumor_objects(cleaned)) >= 1
    assert len(rejected) == sum(r.cls == TUMOR for r in removals)
    for c in crops:
        box = tuple(slice(a, b) for a, b in c.record["crop_bbox"])
        assert np.array_equal(c.label, cleaned[box])
        drawn = np.array(c.record["margins_drawn"]) * np.array(coarse)[:, None]
        ctx = np.array(c.record["margins"]) * np.array(spacing)[:, None]
        assert np.all(np.abs(ctx - drawn) <= np.array(spacing)[:, None] / 2 + 1e-9)
        assert drawn[0].min() >= 8 * 2.5 and drawn[1:].min() >= 24 * 1.5   # the paper's numbers in mm
