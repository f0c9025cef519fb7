"""Synthetic phantoms: pools, partial labels, geometry, anatomy in physical space, tumors, determinism."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from flareseg.cli import main as cli_main
from flareseg.config import PhantomConfig
from flareseg.data.phantom_case import ORIENTATIONS
from flareseg.data.phantoms import (LABELED_GROUPS, generate_case, partial_label, plan_cases,
                                    write_phantoms)
from flareseg.io import Geometry, geometry_mismatch, read_array, read_json
from flareseg.labels import FOREGROUND, ORGANS, TUMOR

SMALL = PhantomConfig(labeled=6, tumor_only=2, unlabeled=2, validation=2, seed=5,
                      size_xy=(40, 48), extent_z_mm=(90.0, 120.0))
# big enough in-plane that the small organs (adrenals) span several voxels
MEDIUM = PhantomConfig(size_xy=(128, 128), slice_spacing=(3.0, 4.0), extent_z_mm=(100.0, 110.0))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantoms")
    return out, write_phantoms(out, SMALL, progress=False)


def physical_centroid(mask: np.ndarray, geo: Geometry) -> np.ndarray:
    """Centroid (mm, x y z) of a (Z, Y, X) mask through SimpleITK's index -> physical transform."""
    img = geo.apply(sitk.Image([int(s) for s in geo.size], sitk.sitkUInt8))
    cz, cy, cx = ndimage.center_of_mass(mask)
    return np.array(img.TransformContinuousIndexToPhysicalPoint((float(cx), float(cy), float(cz))))


def test_pools_groups_and_manifest(written):
    out, meta = written
    cases = meta["cases"]
    assert list(cases) == [f"PH_{i:04d}" for i in range(12)]
    pools = Counter(c["pool"] for c in cases.values())
    assert pools == {"labeled": 6, "tumor_only": 2, "unlabeled": 2, "validation": 2}
    labeled_groups = {c["group"] for c in cases.values() if c["pool"] == "labeled"}
    assert labeled_groups == set(LABELED_GROUPS)            # each group at least once
    for cid, c in cases.items():
        for rel in c["files"].values():
            assert (out / rel).is_file(), rel
    assert sorted(p.name for p in (out / "unlabeledTr").iterdir()) == [
        f"{c}_0000.nii.gz" for c, e in cases.items() if e["pool"] == "unlabeled"]
    assert len(list((out / "hidden_gt").iterdir())) == 10    # every training case, no validation
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == [c for c, e in cases.items()
                                            if e["pool"] in ("labeled", "tumor_only")]
    for r in rows:
        e = cases[r["case_id"]]
        assert [int(v) for v in r["annotated"].split()] == e["annotated"]
        if e["pool"] == "tumor_only":
            assert r["annotated"] == "14"
    assert read_json(out / "phantoms.json")["seed"] == SMALL.seed


def test_small_labeled_pool_gets_distinct_groups():
    plans = plan_cases(PhantomConfig(labeled=3, tumor_only=0, unlabeled=0, validation=0))
    assert len({p.group for p in plans}) == 3


def test_labels_are_hidden_gt_masked_to_annotated_classes(written):
    out, meta = written
    for cid, c in meta["cases"].items():
        if c["pool"] not in ("labeled", "tumor_only"):
            continue
        lab, _ = read_array(out / c["files"]["label"])
        gt, _ = read_array(out / c["files"]["hidden_gt"])
        assert set(np.unique(gt).tolist()) <= set(range(15))
        assert set(np.unique(lab).tolist()) <= {0, *c["annotated"]}, cid
        np.testing.assert_array_equal(lab, partial_label(gt, c["annotated"]))
        if c["pool"] == "tumor_only" or c["group"] in ("liver_tumor", "kidneys_tumor", "pancreas_tumor"):
            assert (lab == TUMOR).any(), f"{cid}: tumor-annotated group without tumor"
    for cid, c in meta["cases"].items():
        if c["pool"] == "validation":
            lab, _ = read_array(out / c["files"]["label"])
            assert c["annotated"] == list(FOREGROUND)
            assert set(ORGANS) - {7, 8} <= set(np.unique(lab).tolist())   # full labels


def test_partial_label_zeroes_unannotated():
    full = np.arange(15, dtype=np.uint8).reshape(1, 3, 5)
    out = partial_label(full, (2, 13, 14))
    assert out.dtype == full.dtype
    assert sorted(np.unique(out).tolist()) == [0, 2, 13, 14]


def test_geometry_ranges_grids_and_orientations(written):
    out, meta = written
    directions = set()
    for cid, c in meta["cases"].items():
        img, geo = read_array(out / c["files"]["image"])
        assert img.dtype == np.int16
        assert SMALL.inplane_spacing[0] - 1e-4 <= geo.spacing[0] <= SMALL.inplane_spacing[1] + 1e-4
        assert geo.spacing[0] == pytest.approx(geo.spacing[1])
        assert SMALL.slice_spacing[0] - 1e-4 <= geo.spacing[2] <= SMALL.slice_spacing[1] + 1e-4
        assert SMALL.size_xy[0] <= geo.size[0] <= SMALL.size_xy[1]
        assert geo.size[2] * geo.spacing[2] == pytest.approx(np.clip(
            geo.size[2] * geo.spacing[2], *SMALL.extent_z_mm), abs=geo.spacing[2])
        np.testing.assert_allclose(geo.spacing, c["spacing"], rtol=1e-5)
        np.testing.assert_allclose(geo.direction, c["direction"])
        for role in ("label", "hidden_gt"):
            if role in c["files"]:
                _, g2 = read_array(out / c["files"][role])
                assert geometry_mismatch(geo, g2) == [], (cid, role)
        assert img[0, 0, 0] < -900 and img.max() > 300       # air corner, bone present
        directions.add(tuple(np.round(geo.direction, 3)))
    assert len(directions) == 3
    assert {tuple(float(v) for v in np.diag(np.reshape(d, (3, 3)))) for d in directions} == {
        tuple(float(s) for s in v) for v in ORIENTATIONS.values()}


@pytest.mark.parametrize("seed", [0, 1])
def test_same_patient_in_any_orientation_has_same_physical_anatomy(seed):
    res = {o: generate_case(np.random.default_rng(seed), SMALL, orientation=o)
           for o in ORIENTATIONS}
    ref = None
    for o, (img, lab, geo, info) in res.items():
        assert info["orientation"] == o
        cents = np.array([physical_centroid(lab == c, geo) for c in (1, 3, 5)])
        if ref is None:
            ref = cents
        np.testing.assert_allclose(cents, ref, atol=1e-3)
    # the stored arrays differ by the flips only
    flipped = np.flip(res["identity"][0], (1, 2))
    np.testing.assert_array_equal(res["flip_xy"][0], flipped)


def test_anatomy_relations_hold_in_physical_space(written):
    """LPS: patient right = -x, posterior = +y, superior = +z, for every stored direction."""
    out, meta = written
    for cid, c in meta["cases"].items():
        rel = c["files"].get("hidden_gt") or c["files"]["label"]
        gt, geo = read_array(out / rel)
        cen = {k: physical_centroid(gt == k, geo) for k in (1, 2, 3, 5, 10, 11, 13)}
        assert cen[1][0] < cen[5][0] < cen[3][0], cid        # liver right, spleen left of aorta
        assert cen[2][0] < cen[13][0], cid                   # right kidney on the right
        assert cen[11][0] > cen[1][0], cid                   # stomach left of liver
        assert cen[2][1] > cen[1][1] and cen[13][1] > cen[11][1], cid   # kidneys posterior
        assert cen[10][2] > cen[2][2] and cen[1][2] > cen[13][2], cid   # esophagus/liver superior


def test_every_organ_present_with_plausible_hu():
    for seed in (0, 1, 2):
        img, lab, geo, info = generate_case(np.random.default_rng(seed), MEDIUM, n_tumors=0)
        counts = np.bincount(lab.ravel(), minlength=15)
        assert (counts[1:14] >= 20).all(), counts
        assert counts[TUMOR] == 0 and info["tumors"] == 0
        assert counts[1] == counts[1:14].max()               # liver is the largest organ
        mean = {c: float(img[lab == c].mean()) for c in ORGANS}
        assert 30 < mean[1] < 160 and mean[9] < mean[1] and mean[5] > 20, (seed, mean)
        assert (img[lab > 0] > -200).mean() > 0.95
        assert img[0, 0, 0] < -900


def test_tumors_sit_in_their_host_organ():
    for seed, hosts in ((0, (1,)), (1, (2, 13)), (2, (4,)), (3, (1, 2, 13, 4, 11))):
        img, lab, geo, info = generate_case(np.random.default_rng(seed), MEDIUM,
                                            tumor_hosts=hosts, n_tumors=2)
        assert info["tumors"] >= 1 and (lab == TUMOR).any()
        assert {t["host"] for t in info["tumor_details"]} <= set(hosts)
        full = np.ones((3, 3, 3), bool)
        comps, n = ndimage.label(lab == TUMOR, structure=full)
        host_mask = np.isin(lab, [t["host"] for t in info["tumor_details"]])
        for k in range(1, n + 1):
            ring = ndimage.binary_dilation(comps == k, structure=full) & (comps != k)
            assert (ring & host_mask).any(), f"seed {seed}: tumor {k} touches no host organ"


def test_reproducible_and_seed_dependent(written, tmp_path):
    a = generate_case(np.random.default_rng(7), SMALL)
    b = generate_case(np.random.default_rng(7), SMALL)
    c = generate_case(np.random.default_rng(8), SMALL)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2] and a[3] == b[3]
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    out, meta = written
    again = write_phantoms(tmp_path / "again", SMALL, workers=2, progress=False)   # processes
    assert again["cases"] == meta["cases"]
    for cid in ("PH_0000", "PH_0007"):
        for rel in meta["cases"][cid]["files"].values():
            x, _ = read_array(out / rel)
            y, _ = read_array(tmp_path / "again" / rel)
            np.testing.assert_array_equal(x, y)


def test_rerun_skips_existing_and_removes_stale(tmp_path):
    cfg = PhantomConfig(labeled=2, tumor_only=1, unlabeled=1, validation=0, size_xy=(32, 32),
                        extent_z_mm=(60.0, 60.0))
    write_phantoms(tmp_path, cfg, progress=False)
    img = tmp_path / "imagesTr" / "PH_0000_0000.nii.gz"
    stamp = img.stat().st_mtime_ns
    write_phantoms(tmp_path, cfg, progress=False)
    assert img.stat().st_mtime_ns == stamp                        # skipped
    write_phantoms(tmp_path, cfg, overwrite=True, progress=False)
    assert img.stat().st_mtime_ns != stamp                        # regenerated
    smaller = PhantomConfig(labeled=1, tumor_only=0, unlabeled=1, validation=0, size_xy=(32, 32),
                            extent_z_mm=(60.0, 60.0))
    meta = write_phantoms(tmp_path, smaller, progress=False)
    assert sorted(meta["cases"]) == ["PH_0000", "PH_0001"]
    assert sorted(p.name for p in (tmp_path / "imagesTr").iterdir()) == ["PH_0000_0000.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "hidden_gt").iterdir()) == [
        "PH_0000.nii.gz", "PH_0001.nii.gz"]
    assert (tmp_path / "manifest.csv").read_text().splitlines()[1:] == [
        f"PH_0000,{' '.join(map(str, meta['cases']['PH_0000']['annotated']))}"]


def test_cli_writes_and_rejects_bad_ranges(tmp_path, capsys):
    rc = cli_main(["phantoms", "--out", str(tmp_path / "p"), "--labeled", "1", "--tumor-only", "1",
                   "--unlabeled", "0", "--validation", "0", "--seed", "3", "--size-xy", "32", "32",
                   "--extent-z", "50", "60"])
    assert rc == 0
    meta = read_json(tmp_path / "p" / "phantoms.json")
    assert meta["seed"] == 3 and meta["config"]["size_xy"] == [32, 32]
    assert [c["pool"] for c in meta["cases"].values()] == ["labeled", "tumor_only"]
    yml = tmp_path / "c.yaml"
    yml.write_text("data:\n  phantoms:\n    labeled: 0\n    tumor_only: 0\n    unlabeled: 1\n"
                   "    validation: 0\n    size_xy: [24, 24]\n    seed: 9\n")
    assert cli_main(["phantoms", "--out", str(tmp_path / "r"), "--config", str(yml), "--seed", "4"]) == 0
    meta = read_json(tmp_path / "r" / "phantoms.json")
    assert meta["seed"] == 4 and meta["config"]["size_xy"] == [24, 24]
    assert [c["pool"] for c in meta["cases"].values()] == ["unlabeled"]
    rc = cli_main(["phantoms", "--out", str(tmp_path / "q"), "--slice-spacing", "5", "1"])
    assert rc == 2
    assert "slice_spacing" in capsys.readouterr().err   # errors go to stderr (issue 14)
    assert not (tmp_path / "q" / "phantoms.json").exists()


@pytest.mark.parametrize("orientation", ["identity", "flip_xy"])
def test_z_margin_adds_body_without_abdominal_organs(orientation):
    """z_margin_mm scans more body above and below the same patient at the same physical place:
    organs cut by the original scan end continue a little, then only vessels and oesophagus above."""
    base = PhantomConfig(size_xy=(64, 64), slice_spacing=(5.0, 5.0), extent_z_mm=(200.0, 200.0))
    wide = PhantomConfig(**{**base.__dict__, "z_margin_mm": 100.0})
    img0, lab0, geo0, _ = generate_case(np.random.default_rng(3), base, orientation=orientation, n_tumors=0)
    img, lab, geo, _ = generate_case(np.random.default_rng(3), wide, orientation=orientation, n_tumors=0)
    extra = 20  # 100 mm / 5 mm
    assert lab.shape == (lab0.shape[0] + 2 * extra, *lab0.shape[1:])
    np.testing.assert_array_equal(lab[extra:-extra], lab0)
    # > 50 mm beyond the scan: the chest has the aorta and oesophagus, the pelvis (below the
    # aorta's and IVC's bifurcation) nothing FLARE labels
    chest, pelvis = (lab[-extra // 2:], lab[:extra // 2]) if geo.direction[8] > 0 else (lab[:extra // 2], lab[-extra // 2:])
    assert set(np.unique(chest).tolist()) <= {0, 5, 6, 10}
    assert set(np.unique(pelvis).tolist()) == {0}
    assert (img[:extra] > -300).mean() > 0.3 and (img[-extra:] > -300).mean() > 0.3   # body continues
    # same physical place: the liver inside the original scan range has the same centroid
    liver = np.zeros_like(lab, dtype=bool)
    liver[extra:-extra] = lab0 == 1
    np.testing.assert_allclose(physical_centroid(liver, geo), physical_centroid(lab0 == 1, geo0), atol=1e-3)


# anatomy: adult at a coarse grid (6 mm voxels, a 384-432 mm field of view): real-size anatomy, fast
ADULT = PhantomConfig(size_xy=(64, 72), inplane_spacing=(6.0, 6.0), slice_spacing=(6.0, 6.0),
                      extent_z_mm=(240.0, 240.0), anatomy="adult")


def _superior_first(arr: np.ndarray, geo: Geometry) -> np.ndarray:
    """(Z, Y, X) array with z ascending towards the head whatever the stored direction."""
    return arr if geo.direction[8] > 0 else arr[::-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adult_anatomy_has_adult_organ_sizes(seed):
    """anatomy: adult keeps the canonical adult sizes whatever the field of view (published adult
    ranges, generously: liver 0.8-2.6 L, spleen 60-500 mL, kidney length 7-15 cm, aorta 15-30 mm),
    where the simple phantom shrinks the body into its array."""
    img, lab, geo, info = generate_case(np.random.default_rng(seed), ADULT, n_tumors=0)
    ml = np.prod(geo.spacing) / 1000.0
    assert 800 < (lab == 1).sum() * ml < 2600 and 60 < (lab == 3).sum() * ml < 500
    for kidney in (2, 13):
        zz = np.flatnonzero((lab == kidney).any(axis=(1, 2)))
        assert 70 <= (zz[-1] - zz[0] + 1) * geo.spacing[2] <= 150
    body = (img > -500).any(axis=0)
    width = np.flatnonzero(body.any(axis=0))
    assert 260 <= (width[-1] - width[0] + 1) * geo.spacing[0] <= 400     # adult body, not the FOV
    assert info["mm_per_unit"][0] == info["mm_per_unit"][1] and 0.9 <= info["mm_per_unit"][0] <= 1.1
    _, simple, sgeo, _ = generate_case(np.random.default_rng(seed), PhantomConfig(
        **{**ADULT.__dict__, "anatomy": "simple", "size_xy": (48, 48), "inplane_spacing": (3.0, 3.0)}),
        n_tumors=0)   # a 144 mm field of view: the simple phantom shrinks the body into it
    assert (simple == 1).sum() * np.prod(sgeo.spacing) / 1000.0 < 0.7 * (lab == 1).sum() * ml


def test_adult_spleen_is_a_crescent_and_kidneys_and_spleen_have_adult_volumes():
    """anatomy: adult, over eight patients on a 2 mm canonical grid:
    - the spleen's visceral surface is concave (stomach, kidney and colon impressions), so its
      middle axial section is a crescent: area / convex-hull area (solidity) median below 0.93
      (0.94-0.97 as a plain ellipsoid, before);
    - kidneys (parenchyma, sinus cut out) and spleen near the published adult means: kidney about
      134-146 mL (Emamian et al., AJR 1993;160:83-6), spleen 215 mL, normal 107-314 mL
      (Prassopoulos et al., Eur Radiol 1997;7:246-8): kidney medians 110-200 mL (were 81-92), spleen
      median inside the normal range."""
    from skimage.morphology import convex_hull_image
    from flareseg.data.phantom_anatomy import render_anatomy, sample_anatomy
    from flareseg.data.phantom_shapes import Grid
    xy = np.arange(-170.0, 170.0, 2.0, dtype=np.float32)
    grid = Grid(np.arange(-120.0, 140.0, 2.0, dtype=np.float32), xy, xy)
    ml, solidity = {2: [], 13: [], 3: []}, []
    for seed in range(8):
        r = render_anatomy(sample_anatomy(np.random.default_rng(seed), adult=True), grid)
        for c in ml:
            ml[c].append((r.label == c).sum() * 8 / 1000.0)
        spleen = r.label == 3
        zs = np.flatnonzero(spleen.any(axis=(1, 2)))
        lab, _ = ndimage.label(spleen[zs[len(zs) // 2]])
        section = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
        solidity.append(section.sum() / convex_hull_image(section).sum())
    assert np.median(solidity) < 0.93, solidity
    for kidney in (2, 13):
        assert 110 <= np.median(ml[kidney]) <= 200, (kidney, ml[kidney])
    assert 107 <= np.median(ml[3]) <= 314, ml[3]


def test_carved_shape_is_the_base_minus_the_cutter():
    from flareseg.data.phantom_shapes import Carved, Ellipsoid, Grid
    ax = np.arange(-20.0, 21.0, 1.0, dtype=np.float32)
    grid = Grid(ax, ax, ax)
    base = Ellipsoid((0.0, 0.0, 0.0), (15.0, 15.0, 15.0), np.eye(3))
    cutter = Ellipsoid((0.0, 0.0, 15.0), (10.5, 10.5, 10.5), np.eye(3))
    bb, fb = base.evaluate(grid)
    bc, f = Carved(base, cutter).evaluate(grid)
    assert bc == bb
    z, y, x = grid.coords(bb)
    inside_cutter = (z ** 2 + y ** 2 + (x - 15.0) ** 2) < 10.5 ** 2
    assert np.array_equal(f < 0, (fb < 0) & ~inside_cutter) and (f < 0).sum() < (fb < 0).sum()


@pytest.mark.parametrize("orientation", ["identity", "flip_z"])
def test_adult_z_margin_reaches_chest_and_pelvis_with_organs_only_in_the_abdomen(orientation):
    """anatomy: adult + z_margin_mm: the scan reaches 150 mm beyond the abdomen at both ends, with
    aerated lungs and the heart above the diaphragm and the iliac bones and vessels below; FLARE
    organs only in the abdominal part (above, the aorta, IVC and oesophagus continue)."""
    wide = PhantomConfig(**{**ADULT.__dict__, "z_margin_mm": 150.0})
    img0, lab0, geo0, _ = generate_case(np.random.default_rng(4), ADULT, orientation=orientation, n_tumors=0)
    img, lab, geo, _ = generate_case(np.random.default_rng(4), wide, orientation=orientation, n_tumors=0)
    extra = 25                                                     # 150 mm / 6 mm
    assert lab.shape == (lab0.shape[0] + 2 * extra, *lab0.shape[1:])
    assert lab.shape[0] * geo.spacing[2] == pytest.approx(240 + 300)
    np.testing.assert_array_equal(lab[extra:-extra], lab0)          # same patient, same place
    img, lab = _superior_first(img, geo), _superior_first(lab, geo)
    chest, pelvis = slice(-extra + 8, None), slice(0, extra - 8)    # > 50 mm beyond the abdomen
    assert set(np.unique(lab[chest]).tolist()) <= {0, 5, 6, 10}
    assert set(np.unique(lab[pelvis]).tolist()) == {0}
    body = ndimage.binary_fill_holes(img[chest] > -500, structure=np.ones((1, 3, 3)))
    for k in range(img[chest].shape[0]):                            # every chest plane: lungs
        plane = body[k] if body[k].any() else (img[chest][k] > -500)
        filled = ndimage.binary_fill_holes(plane)
        assert ((img[chest][k] < -700) & filled).sum() * geo.spacing[0] ** 2 > 5000   # > 50 cm^2
    assert (img[pelvis] > 250).sum() > 3 * (img[extra:extra + 8] > 250).sum() > 0   # iliac bone


def test_adult_phantoms_are_deterministic_by_seed(tmp_path):
    cfg = PhantomConfig(**{**ADULT.__dict__, "labeled": 1, "tumor_only": 0, "unlabeled": 1,
                           "validation": 0, "z_margin_mm": 60.0, "seed": 3})
    a = write_phantoms(tmp_path / "a", cfg, progress=False)
    b = write_phantoms(tmp_path / "b", cfg, workers=2, progress=False)
    c = write_phantoms(tmp_path / "c", PhantomConfig(**{**cfg.__dict__, "seed": 4}), progress=False)
    assert a["cases"] == b["cases"] != c["cases"] and a["config"]["anatomy"] == "adult"
    for rel in a["cases"]["PH_0001"]["files"].values():
        np.testing.assert_array_equal(read_array(tmp_path / "a" / rel)[0], read_array(tmp_path / "b" / rel)[0])
    x, y = (read_array(tmp_path / d / a["cases"]["PH_0001"]["files"]["image"])[0] for d in "ac")
    assert x.shape != y.shape or not np.array_equal(x, y)


def test_adult_hu_lies_in_the_published_ranges_of_its_phase():
    """Organ cores (away from partial volume at the edges) read the phase's published HU range
    within the noise; the phase is recorded per case."""
    from flareseg.data.phantom_anatomy import ADULT_ORGAN_HU, PHASES
    seen = set()
    for seed in range(6):
        img, lab, geo, info = generate_case(np.random.default_rng(seed), ADULT, n_tumors=0)
        pi = PHASES.index(info["phase"])
        seen.add(info["phase"])
        for c in (1, 3):
            core = ndimage.binary_erosion(lab == c, iterations=2)
            lo, hi = ADULT_ORGAN_HU[c][pi]
            # within the noise (12) and the scan's calibration offset (CALIBRATION_HU)
            assert lo - 24 < float(img[core].mean()) < hi + 24, (seed, c, info["phase"])
        fat = (img > -150) & (img < -60)
        assert fat.sum() * np.prod(geo.spacing) / 1000.0 > 500        # subcutaneous and visceral fat
    assert len(seen) >= 2


def test_a_fixed_phase_keeps_the_patient_and_changes_only_the_contrast():
    """``phase=`` gives the same patient (labels, geometry) in another contrast phase: the drawn
    phase is still drawn, so every later draw is the same; the organs then read that phase's HU.
    bench.real_ct_probe relies on this to ask whether a model knows the unenhanced organs."""
    from flareseg.data.phantom_anatomy import ADULT_ORGAN_HU, PHASES
    out = {ph: generate_case(np.random.default_rng(2), ADULT, n_tumors=0, phase=ph) for ph in ("plain", "portal")}
    (img_p, lab_p, geo_p, info_p), (img_v, lab_v, geo_v, info_v) = out["plain"], out["portal"]
    assert (info_p["phase"], info_v["phase"]) == ("plain", "portal")
    np.testing.assert_array_equal(lab_p, lab_v)
    assert geo_p == geo_v
    for c in (1, 2, 3):
        core = ndimage.binary_erosion(lab_p == c, iterations=1)
        for img, ph in ((img_p, "plain"), (img_v, "portal")):
            lo, hi = ADULT_ORGAN_HU[c][PHASES.index(ph)]
            assert lo - 24 < float(img[core].mean()) < hi + 24, (c, ph)
    # the drawn phase is the default: no phase= reproduces the case that names its own drawn phase
    img_d, lab_d, _, info_d = generate_case(np.random.default_rng(2), ADULT, n_tumors=0)
    img_same, *_ = generate_case(np.random.default_rng(2), ADULT, n_tumors=0, phase=info_d["phase"])
    np.testing.assert_array_equal(img_same, img_d)
    np.testing.assert_array_equal(lab_d, lab_p)
    with pytest.raises(ValueError, match="venous"):
        generate_case(np.random.default_rng(2), ADULT, phase="venous")


@pytest.mark.parametrize("seed", [0, 5])
def test_adult_kidneys_sit_in_perirenal_fat_with_a_medial_sinus(seed):
    """anatomy: adult: each kidney is wrapped in perirenal fat (5-20 mm, with visceral adiposity),
    so an unenhanced kidney stands out from the bowel and muscle around it as in real CT; its renal
    sinus (fat, with the pelvis in it) opens medially and is not labelled kidney.  The simple
    phantom has neither."""
    from flareseg.data.phantom_anatomy import render_anatomy, sample_anatomy
    from flareseg.data.phantom_shapes import Grid
    axis = np.arange(-160.0, 160.0, 2.0, dtype=np.float32)
    grid = Grid(np.arange(-100.0, 60.0, 2.0, dtype=np.float32), axis, axis)
    p = sample_anatomy(np.random.default_rng(seed), adult=True)
    assert 5.0 <= p.renal_fat_mm <= 20.0
    r = render_anatomy(p, grid)
    fat = r.image == np.float32(p.hu["fat"])
    for kidney in (2, 13):
        own = r.label == kidney
        # the 2-4 mm shell outside the kidney, where no organ is labelled: mostly fat
        shell = ndimage.binary_dilation(own, iterations=2) & ~ndimage.binary_dilation(own) & (r.label == 0) & r.allowed
        assert fat[shell].mean() > 0.6, (kidney, fat[shell].mean())
        # the sinus: unlabelled voxels inside the kidney's ellipsoid, fat or urine, medial to its centre
        (bbox, f, _), = r.fields[kidney]
        sinus = (f < 0) & (r.label[bbox] == 0) & r.allowed[bbox]
        assert sinus.sum() > 0.03 * own.sum()
        hu = r.image[bbox][sinus]
        assert np.isin(hu, [np.float32(p.hu["fat"]), np.float32(p.hu["pelvis"])]).mean() > 0.95
        xs = np.broadcast_to(grid.coords(bbox)[2], sinus.shape)
        kx = np.broadcast_to(grid.coords(bbox)[2], own[bbox].shape)[own[bbox]].mean()
        assert abs(xs[sinus].mean()) < abs(kx)                      # toward the midline
    simple = sample_anatomy(np.random.default_rng(seed))
    assert simple.renal_fat_mm == 0.0
    s = render_anatomy(simple, grid)
    (bbox, f, _), = s.fields[2]
    assert ((f < 0) & s.allowed[bbox] & (s.label[bbox] == 0)).sum() == 0    # no sinus: all labelled


def test_adult_scans_carry_a_calibration_offset_within_the_published_spread():
    """Each adult phantom's CT numbers are shifted by one offset for the whole scan (scanners differ
    by up to 10-20 HU for the same tissue): a uniform 40 HU scene reads 40 + offset everywhere,
    the offset differs between scans and stays within +-CALIBRATION_HU."""
    from flareseg.data.phantom_case import CALIBRATION_HU, finish_ct
    scene = np.full((8, 48, 48), 40.0, dtype=np.float32)
    offsets = []
    for seed in range(12):
        out = finish_ct(np.random.default_rng(seed), scene, (5.0, 2.0, 2.0)).astype(float)
        half = (out[:, :24].mean(), out[:, 24:].mean())
        assert abs(half[0] - half[1]) < 2.0                  # one offset for the whole scan
        offsets.append(out.mean() - 40.0)
    assert all(abs(o) < CALIBRATION_HU + 1.0 for o in offsets)
    assert max(offsets) - min(offsets) > CALIBRATION_HU     # they do differ between scans


def test_the_labeled_pool_holds_the_configured_mix_not_a_draw_from_it():
    """The demo's 16 labeled phantoms hold the FLARE23-like mix itself: half of them annotate every
    organ (3 + 5), so the spleen is annotated in 8 of the 20 training cases.  (Drawn case by case,
    seed 0 gave 5.)  For any pool size and weights every group gets its share rounded up or down,
    the counts add up to the pool, every weighted group is present where the pool allows, and the
    same seed gives the same plan."""
    from collections import Counter
    from hypothesis import given, settings, strategies as st
    from flareseg.config import PhantomConfig
    from flareseg.data.phantoms import GROUP_WEIGHTS, LABELED_GROUPS, group_counts, plan_cases
    cfg = PhantomConfig(labeled=16, tumor_only=4, unlabeled=2, validation=1, seed=0)
    groups = Counter(p.group for p in plan_cases(cfg) if p.pool == "labeled")
    assert groups == {"all_organs_tumor": 3, "all_organs": 5, "liver_tumor": 3, "kidneys_tumor": 3,
                      "pancreas_tumor": 2} or groups == {"all_organs_tumor": 3, "all_organs": 5,
                                                         "liver_tumor": 3, "kidneys_tumor": 2,
                                                         "pancreas_tumor": 3}
    assert sum(3 in p.annotated for p in plan_cases(cfg) if p.pool != "validation") == 8
    assert [p.group for p in plan_cases(cfg)] == [p.group for p in plan_cases(cfg)]

    @settings(max_examples=200, derandomize=True, database=None, deadline=None)
    @given(st.integers(0, 300), st.lists(st.integers(0, 20), min_size=len(LABELED_GROUPS),
                                         max_size=len(LABELED_GROUPS)).filter(any))
    def check(n, raw):
        weights = dict(zip(LABELED_GROUPS, map(float, raw)))
        counts = group_counts(n, weights)
        assert sum(counts.values()) == n and set(counts) == {g for g, w in weights.items() if w > 0}
        quota = {g: n * weights[g] / sum(weights.values()) for g in counts}
        if n >= len(counts):
            assert min(counts.values()) >= 1
        if min(quota.values()) >= 1:
            assert all(abs(counts[g] - quota[g]) < 1 for g in counts)
    check()
    assert group_counts(16, GROUP_WEIGHTS)["all_organs"] == 5


def test_group_weights_choose_the_labeled_pool_mix():
    """data.phantoms.group_weights: {all_organs_tumor: 1} labels every labeled case fully; a mix
    gets only the groups it weights; unknown groups are refused by name; unset, it is the
    FLARE23-like mix."""
    from dataclasses import replace
    from flareseg.config import PhantomConfig
    from flareseg.data.phantoms import LABELED_GROUPS, plan_cases
    cfg = PhantomConfig(labeled=9, tumor_only=1, unlabeled=1, validation=1, seed=3)
    full = plan_cases(replace(cfg, group_weights={"all_organs_tumor": 1.0}))
    assert {p.group for p in full if p.pool == "labeled"} == {"all_organs_tumor"}
    assert all(p.annotated == LABELED_GROUPS["all_organs_tumor"] for p in full if p.pool == "labeled")
    two = [p.group for p in plan_cases(replace(cfg, group_weights={"liver_tumor": 1, "kidneys_tumor": 3}))
           if p.pool == "labeled"]
    assert set(two) == {"liver_tumor", "kidneys_tumor"}
    assert [p.group for p in plan_cases(cfg)] == [p.group for p in plan_cases(replace(cfg, group_weights=None))]
    with pytest.raises(ValueError, match="unknown group.*'liver'"):
        plan_cases(replace(cfg, group_weights={"liver": 1.0}))
    with pytest.raises(ValueError, match="at least one group"):
        plan_cases(replace(cfg, group_weights={"liver_tumor": 0.0}))
