"""Label cleaning: planted cases for each rule, folder runner, CLI, real KiTS19 tumors."""
from __future__ import annotations

import csv
import importlib.util
from dataclasses import replace
from pathlib import Path

import fastremap
import numpy as np
import pytest

from flareseg.write_guard import UnsafeOutput
from scipy import ndimage

from flareseg.cleaning import (FAR_FROM_ORGANS, OUTSIDE_ABDOMEN, SMALL_COMPONENT, clean_folder,
                               clean_label, read_report, remove_small_components,
                               remove_tumors_far_from_organs, remove_tumors_outside_abdomen,
                               tumor_organ_distance)
from flareseg.cleaning.components import label_components
from flareseg.config import CleaningConfig
from flareseg.io import Geometry, file_digest, read_array, write_array
from flareseg.labels import TUMOR

REPO = Path(__file__).resolve().parents[1]
LIVER, KIDNEY, SPLEEN = 1, 2, 3
NO_TUMOR_RULES = CleaningConfig(remove_outside_abdomen=False, remove_far_from_organs=False)


def box(label: np.ndarray, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int], v: int):
    label[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = v
    return label


def organ_with_tumor_at(dz: int = 0, dx: int = 0, shape=(40, 40, 120)) -> np.ndarray:
    """Liver block x in [10, 30); a 4^3 tumor whose first voxel is ``dx`` (``dz``) voxels past it."""
    lab = box(np.zeros(shape, np.uint8), (10, 20), (10, 30), (10, 30), LIVER)
    z0, x0 = (20 + dz - 1, 12) if dz else (12, 30 + dx - 1)
    return box(lab, (z0, z0 + 4), (12, 16), (x0, x0 + 4), TUMOR)


# ----------------------------------------------------------------------------- rule 1

def test_small_blob_removed_large_organ_kept():
    lab = box(np.zeros((30, 30, 30), np.uint8), (5, 15), (5, 15), (5, 15), LIVER)  # 1000 voxels
    box(lab, (20, 23), (20, 23), (20, 23), SPLEEN)                                # 27 voxels
    out, rec = remove_small_components(lab, (2.0, 1.0, 0.5), 100, case_id="c1")
    assert (out == LIVER).sum() == 1000 and (out == SPLEEN).sum() == 0
    assert out[20:23, 20:23, 20:23].max() == 0                     # removed voxels -> background
    assert len(rec) == 1
    r = rec[0]
    assert (r.case, r.cls, r.class_name, r.voxels, r.reason) == ("c1", SPLEEN, "spleen", 27,
                                                                  SMALL_COMPONENT)
    assert r.volume_mm3 == pytest.approx(27 * 2.0 * 1.0 * 0.5)
    assert r.bbox == ((20, 23), (20, 23), (20, 23))
    assert lab[20, 20, 20] == SPLEEN                               # input untouched


def test_components_are_per_class_and_follow_connectivity():
    lab = box(np.zeros((30, 30, 30), np.uint8), (5, 15), (5, 15), (5, 15), LIVER)
    box(lab, (5, 10), (15, 17), (5, 10), KIDNEY)       # 50 kidney voxels glued to the liver
    box(lab, (20, 24), (20, 24), (20, 24), SPLEEN)     # two 64-voxel cubes touching at a corner:
    box(lab, (24, 28), (24, 28), (24, 28), SPLEEN)     # one 128-voxel component under 26-conn.
    out26, rec26 = remove_small_components(lab, (1, 1, 1), 100, connectivity=26)
    out6, rec6 = remove_small_components(lab, (1, 1, 1), 100, connectivity=6)
    assert [(r.cls, r.voxels) for r in rec26] == [(KIDNEY, 50)]
    assert (out26 == SPLEEN).sum() == 128
    assert sorted((r.cls, r.voxels) for r in rec6) == [(KIDNEY, 50), (SPLEEN, 64), (SPLEEN, 64)]
    assert (out6 == LIVER).sum() == 1000


# ----------------------------------------------------------------------------- rule 2

def test_tumor_outside_abdomen_removed_inside_margin_kept():
    lab = box(np.zeros((40, 60, 60), np.uint8), (10, 20), (10, 20), (10, 20), LIVER)
    box(lab, (12, 14), (22, 24), (12, 14), TUMOR)   # 2 mm past the organ box: inside margin
    box(lab, (35, 38), (50, 55), (50, 55), TUMOR)   # far corner: outside
    box(lab, (18, 21), (28, 35), (18, 21), TUMOR)   # reaches y=29, inside 10 mm margin: kept
    out, rec = remove_tumors_outside_abdomen(lab, (1, 1, 1), 10.0, case_id="c")
    assert [(r.reason, r.bbox) for r in rec] == [(OUTSIDE_ABDOMEN, ((35, 38), (50, 55), (50, 55)))]
    assert out[12, 22, 12] == TUMOR and out[20, 34, 20] == TUMOR and out[36, 52, 52] == 0


def test_abdomen_margin_is_in_mm():
    lab = box(np.zeros((40, 40, 40), np.uint8), (10, 20), (10, 20), (10, 20), LIVER)
    box(lab, (26, 28), (12, 14), (12, 14), TUMOR)   # 6 voxels past the organ box along z
    kept, _ = remove_tumors_outside_abdomen(lab, (2.0, 1, 1), 15.0)      # 12 mm: inside
    gone, rec = remove_tumors_outside_abdomen(lab, (4.0, 1, 1), 15.0)    # 24 mm: outside
    assert (kept == TUMOR).any() and not (gone == TUMOR).any() and len(rec) == 1


def test_body_mask_region_without_organs():
    image = np.full((20, 40, 40), -1000, np.int16)
    image[:, 8:32, 8:32] = 40                               # the body
    lab = box(np.zeros(image.shape, np.uint8), (5, 9), (12, 16), (12, 16), TUMOR)
    box(lab, (5, 9), (1, 5), (1, 5), TUMOR)                 # in the air around the body
    out, rec = remove_tumors_outside_abdomen(lab, (1, 1, 1), 10.0, image=image)
    assert len(rec) == 1 and rec[0].bbox == ((5, 9), (1, 5), (1, 5))
    assert out[6, 13, 13] == TUMOR
    # neither organs nor image: no region, nothing removed by any tumor rule
    same, rec2 = clean_label(lab, (1, 1, 1), CleaningConfig(min_voxels=10))
    assert rec2 == [] and np.array_equal(same, lab)


# ----------------------------------------------------------------------------- rule 3

def test_tumor_touching_organ_kept():
    lab = organ_with_tumor_at(dx=1)                 # adjacent to the liver
    out, rec = remove_tumors_far_from_organs(lab, (1, 1, 1), 2.0)
    assert rec == [] and (out == TUMOR).sum() == 64
    inside = box(lab.copy(), (12, 14), (12, 14), (12, 14), TUMOR)   # tumor inside the liver
    assert remove_tumors_far_from_organs(inside, (1, 1, 1), 2.0)[1] == []


@pytest.mark.parametrize("d_mm, removed", [(20.0, True), (60.0, False)])
def test_tumor_40mm_away(d_mm, removed):
    lab = organ_with_tumor_at(dx=20)                # 20 voxels x 2 mm = 40 mm centre to centre
    cfg = CleaningConfig(min_voxels=10, abdomen_margin_mm=200.0, max_organ_distance_mm=d_mm)
    out, rec = clean_label(lab, (1.0, 1.0, 2.0), cfg, case_id="far")
    assert ((out == TUMOR).sum() == 0) == removed
    if removed:
        assert len(rec) == 1 and rec[0].reason == FAR_FROM_ORGANS
        assert rec[0].distance_mm is None           # no organ within the 20 mm search box
        assert (rec[0].voxels, rec[0].volume_mm3) == (64, 128.0)
    else:
        assert rec == []


def test_anisotropic_spacing_is_honoured():
    # 3 slices apart at 5 mm = 15 mm: too far for D = 10 (a voxel metric would say 3)
    lab = organ_with_tumor_at(dz=3)
    out, rec = remove_tumors_far_from_organs(lab, (5.0, 1.0, 1.0), 10.0)
    assert len(rec) == 1 and (out == TUMOR).sum() == 0
    assert remove_tumors_far_from_organs(lab, (5.0, 1.0, 1.0), 15.0)[1] == []
    # 15 columns apart at 0.5 mm = 7.5 mm: close enough for D = 10 (a voxel metric would say 15)
    lab = organ_with_tumor_at(dx=15)
    out, rec = remove_tumors_far_from_organs(lab, (5.0, 1.0, 0.5), 10.0)
    assert rec == [] and (out == TUMOR).sum() == 64
    # adjacent along z at 5 mm spacing is 5 mm away: removed under D = 4, kept under D = 5
    lab = organ_with_tumor_at(dz=1)
    assert len(remove_tumors_far_from_organs(lab, (5.0, 1.0, 1.0), 4.0)[1]) == 1
    assert remove_tumors_far_from_organs(lab, (5.0, 1.0, 1.0), 5.0)[1] == []


def test_distance_is_euclidean_not_per_axis():
    lab = box(np.zeros((30, 40, 40), np.uint8), (10, 20), (5, 15), (5, 15), LIVER)
    box(lab, (10, 14), (23, 27), (23, 27), TUMOR)   # 9 voxels from the liver along y and x
    out, rec = remove_tumors_far_from_organs(lab, (1.0, 1.0, 1.0), 10.0)
    assert len(rec) == 1 and rec[0].distance_mm == pytest.approx(np.sqrt(2 * 9 ** 2), abs=1e-3)
    assert remove_tumors_far_from_organs(lab, (1.0, 1.0, 1.0), 13.0)[1] == []


def test_distance_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        tumor = rng.random((6, 9, 8)) < 0.05
        organ = (rng.random(tumor.shape) < 0.05) & ~tumor
        if not tumor.any() or not organ.any():
            continue
        sp = rng.uniform(0.5, 4.0, 3)
        pt, po = np.argwhere(tumor) * sp, np.argwhere(organ) * sp
        brute = np.sqrt(((pt[:, None] - po[None]) ** 2).sum(-1)).min()
        assert tumor_organ_distance(tumor, organ, sp) == pytest.approx(brute)


def test_distance_rule_skipped_without_organs():
    lab = box(np.zeros((20, 20, 20), np.uint8), (5, 10), (5, 10), (5, 10), TUMOR)
    out, rec = remove_tumors_far_from_organs(lab, (1, 1, 1), 5.0)
    assert rec == [] and np.array_equal(out, lab)


# ----------------------------------------------------------------------------- clean_label

def _reference():
    spec = importlib.util.spec_from_file_location("cleaning_speed", REPO / "bench" / "cleaning_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.parametrize("density", [0.02, 0.6])   # sparse and dense component statistics
def test_clean_label_matches_full_volume_reference(density):
    ref = _reference()
    rng = np.random.default_rng(int(density * 100))
    for conn in (6, 26):
        lab = np.zeros((24, 48, 48), np.uint8)
        noise = ndimage.zoom(rng.random((6, 12, 12)), 4, order=1) < density
        classes = ndimage.zoom(rng.integers(1, 14, (12, 24, 24)), 2, order=0)
        lab[noise] = classes[noise]
        for _ in range(6):
            c = rng.integers(0, lab.shape)
            box(lab, (c[0], c[0] + 3), (c[1], c[1] + 5), (c[2], c[2] + 5), TUMOR)
        box(lab, (10, 16), (20, 30), (20, 30), LIVER)
        cfg = CleaningConfig(min_voxels=20, connectivity=conn, abdomen_margin_mm=3.0,
                             max_organ_distance_mm=4.0)
        ours, rec = clean_label(lab, (2.0, 0.8, 0.8), cfg)
        assert np.array_equal(ours, ref.reference_clean(lab, (2.0, 0.8, 0.8), cfg))
        assert {r.reason for r in rec} <= {SMALL_COMPONENT, OUTSIDE_ABDOMEN, FAR_FROM_ORGANS}
        assert sum(r.voxels for r in rec) == int(((lab > 0) & (ours == 0)).sum())


def test_component_statistics_agree_between_paths():
    lab = np.random.default_rng(0).integers(0, 4, (10, 12, 14)).astype(np.uint8)
    dense = label_components(lab, 6).items              # 3/4 foreground: one pass over the crop
    padded = np.zeros((10, 12, 200), np.uint8)
    padded[:, :, :14] = lab
    padded[0, 0, 199] = 3                                # stretches the crop: mostly background
    sparse = [c for c in label_components(padded, 6).items if c.bbox[2].start < 14]
    key = lambda c: (c.bbox, c.cls, c.voxels)            # noqa: E731
    assert len(dense) > 20 and sorted(map(key, dense)) == sorted(map(key, sparse))


def _brute_force_components(lab: np.ndarray, connectivity: int) -> list[tuple]:
    """(bbox, class, voxels) of every per-class component, one ``ndimage.label`` per class and a
    full-array scan per component (slow, obviously right)."""
    from scipy import ndimage
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    out = []
    for cls in np.unique(lab[lab > 0]):
        comp, n = ndimage.label(lab == cls, structure)
        for k in range(1, n + 1):
            where = np.nonzero(comp == k)
            box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)
            out.append((box, int(cls), int(where[0].size)))
    return sorted(out, key=lambda t: (t[1], t[2], [(s.start, s.stop) for s in t[0]]))


@pytest.mark.parametrize("fill", [0.02, 0.7])     # mostly background (sparse path) / dense (cc3d.statistics)
@pytest.mark.parametrize("connectivity", [6, 26])
def test_component_sizes_boxes_classes_match_a_brute_force_reference(fill, connectivity):
    rng = np.random.default_rng(int(fill * 100) + connectivity)
    lab = np.where(rng.random((12, 20, 24)) < fill, rng.integers(1, 5, (12, 20, 24)), 0).astype(np.uint8)
    got = [(c.bbox, c.cls, c.voxels) for c in label_components(lab, connectivity).items]
    got = sorted(got, key=lambda t: (t[1], t[2], [(s.start, s.stop) for s in t[0]]))
    ref = _brute_force_components(lab, connectivity)
    assert len(ref) > 5 and got == ref


def test_each_tumor_removed_once_with_its_reason():
    lab = box(np.zeros((40, 80, 80), np.uint8), (10, 30), (10, 30), (10, 30), LIVER)
    box(lab, (10, 30), (10, 30), (50, 60), KIDNEY)        # organ bbox spans x 10..60
    box(lab, (12, 16), (15, 19), (38, 42), TUMOR)         # in the region, 9 mm from organs
    box(lab, (20, 24), (30, 34), (20, 24), TUMOR)         # touches the liver
    box(lab, (34, 38), (72, 76), (2, 6), TUMOR)           # beyond the 5 mm margin
    cfg = CleaningConfig(min_voxels=10, abdomen_margin_mm=5.0, max_organ_distance_mm=8.0)
    out, rec = clean_label(lab, (1, 1, 1), cfg)
    assert [(r.reason, r.bbox[1]) for r in rec] == [(OUTSIDE_ABDOMEN, (72, 76)),
                                                    (FAR_FROM_ORGANS, (15, 19))]
    assert (out == TUMOR).sum() == 64 and out[21, 31, 21] == TUMOR


def test_clean_label_input_untouched_and_validated():
    lab = organ_with_tumor_at(dx=30)
    before = lab.copy()
    out, rec = clean_label(lab, (1, 1, 1), CleaningConfig(min_voxels=10))
    assert np.array_equal(lab, before) and out is not lab and out.dtype == lab.dtype and rec
    same, none = clean_label(before, (1, 1, 1), replace(NO_TUMOR_RULES, min_voxels=10))
    assert none == [] and same is not before and np.array_equal(same, before)
    with pytest.raises(ValueError, match="0..14"):
        clean_label(before + 20, (1, 1, 1), CleaningConfig())
    with pytest.raises(ValueError, match="spacing"):
        clean_label(before, (1, 0, 1), CleaningConfig())


# ----------------------------------------------------------------------------- folder + CLI

GEOM_SPACING = (0.5, 0.8, 2.0)                    # (x, y, z) as SimpleITK stores it
GEOM_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def _write_case(folder: Path, name: str, lab: np.ndarray) -> Path:
    geom = Geometry(tuple(reversed(lab.shape)), GEOM_SPACING, (10.0, -5.0, 3.0), GEOM_DIRECTION)
    return write_array(lab, geom, folder / name)


@pytest.fixture
def label_folder(tmp_path: Path) -> Path:
    d = tmp_path / "labels"
    a = box(np.zeros((30, 30, 40), np.uint8), (5, 15), (5, 15), (5, 15), LIVER)
    box(a, (20, 23), (20, 23), (20, 23), SPLEEN)                  # 27 voxels: small
    box(a, (5, 10), (5, 10), (15, 20), TUMOR)                     # touches the liver: kept
    box(a, (2, 7), (22, 27), (32, 37), TUMOR)                     # far from the liver
    _write_case(d, "case_a.nii.gz", a)
    b = box(np.zeros((20, 20, 20), np.uint8), (2, 18), (2, 18), (2, 18), KIDNEY)
    _write_case(d, "case_b.nii.gz", b)                            # nothing to remove
    (d / "broken.nii.gz").write_bytes(b"not a nifti")
    _write_case(d, "bad_values.nii.gz", np.full((4, 4, 4), 99, np.uint8))
    return d


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_clean_folder_report_geometry_and_inputs(label_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    digests = {p.name: file_digest(p) for p in label_folder.iterdir()}
    cfg = CleaningConfig(abdomen_margin_mm=100.0, max_organ_distance_mm=10.0)
    report = clean_folder(label_folder, out, cfg)
    assert {p.name: file_digest(p) for p in label_folder.iterdir()} == digests
    rows = _read_csv(out / "cleaning_report.csv")
    vox_mm3 = 0.5 * 0.8 * 2.0
    assert [(r["case"], r["class"], r["class_name"], r["voxels"], r["reason"]) for r in rows] == [
        ("case_a", "3", "spleen", "27", SMALL_COMPONENT),
        ("case_a", "14", "tumor", "125", FAR_FROM_ORGANS)]
    assert float(rows[0]["volume_mm3"]) == pytest.approx(27 * vox_mm3)
    assert read_report(out / "cleaning_report.csv") == report.records
    summary = {r["case"]: r for r in _read_csv(out / "cleaning_summary.csv")}
    assert summary["case_a"]["status"] == "ok" and summary["case_a"]["components_removed"] == "2"
    assert summary["case_b"]["voxels_removed"] == "0"
    assert summary["broken"]["status"] == "error" and "broken.nii.gz" in summary["broken"]["error"]
    assert "0..14" in summary["bad_values"]["error"]
    assert len(report.errors) == 2
    cleaned, geom = read_array(out / "labels" / "case_a.nii.gz")
    src, src_geom = read_array(label_folder / "case_a.nii.gz")
    assert geom == src_geom and cleaned.dtype == src.dtype
    assert (cleaned == TUMOR).sum() == 125 and (cleaned == SPLEEN).sum() == 0


def test_clean_folder_is_idempotent(label_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    cfg = CleaningConfig(max_organ_distance_mm=10.0)
    first = clean_folder(label_folder, out, cfg)
    files = ["cleaning_report.csv", "cleaning_summary.csv", "labels/case_a.nii.gz"]
    before = {f: (out / f).read_bytes() for f in files}
    mtime = (out / "labels" / "case_a.nii.gz").stat().st_mtime_ns
    second = clean_folder(label_folder, out, cfg)
    assert first.reused == 0 and second.reused == 2
    assert {f: (out / f).read_bytes() for f in files} == before
    assert (out / "labels" / "case_a.nii.gz").stat().st_mtime_ns == mtime
    # a changed config or a damaged output is recomputed
    third = clean_folder(label_folder, out, replace(cfg, min_voxels=20))
    assert third.reused == 0 and len(third.records) == len(first.records) - 1
    (out / "labels" / "case_b.nii.gz").write_bytes(b"damaged")   # changed since clean wrote it: foreign
    with pytest.raises(UnsafeOutput, match="case_b.nii.gz exists and was not written by flareseg clean"):
        clean_folder(label_folder, out, replace(cfg, min_voxels=20))
    assert (out / "labels" / "case_b.nii.gz").read_bytes() == b"damaged"
    assert clean_folder(label_folder, out, replace(cfg, min_voxels=20), overwrite=True).reused == 1
    with pytest.raises(ValueError, match="overwrite"):
        clean_folder(label_folder, label_folder.parent, cfg)


def test_cli_clean_with_override(label_folder: Path, tmp_path: Path, capsys):
    from flareseg.cli import main
    for bad in label_folder.glob("b*.nii.gz"):
        bad.unlink()
    rc = main(["clean", "--labels", str(label_folder), "--out", str(tmp_path / "o1")])
    assert rc == 0 and "(small_component: 1)" in capsys.readouterr().out   # tumor 11 mm: kept
    rc = main(["clean", "--labels", str(label_folder), "--out", str(tmp_path / "o2"),
               "--set", "cleaning.min_voxels=20", "--set", "cleaning.max_organ_distance_mm=10"])
    assert rc == 0 and "(far_from_organs: 1)" in capsys.readouterr().out
    assert main(["clean", "--labels", str(label_folder), "--out", str(tmp_path / "o3"),
                 "--set", "cleaning.nope=1"]) == 2


# ----------------------------------------------------------------------------- real KiTS19

def _kits_flare(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    lab, geom = read_array(path)
    return fastremap.remap(lab, {0: 0, 1: KIDNEY, 2: TUMOR}), geom.spacing_zyx


def _touching_tumors(lab: np.ndarray) -> list[np.ndarray]:
    """Voxel coordinates of each 26-connected tumor component that touches the kidney."""
    comps, n = ndimage.label(lab == TUMOR, ndimage.generate_binary_structure(3, 3))
    out = []
    for i, sl in enumerate(ndimage.find_objects(comps), start=1):
        grown = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        m = comps[grown] == i
        if (ndimage.binary_dilation(m) & (lab[grown] == KIDNEY)).any():
            out.append(np.argwhere(m) + [s.start for s in grown])
    return out


def _check_kits_case(path: Path) -> None:
    lab, spacing = _kits_flare(path)
    cleaned, records = clean_label(lab, spacing, CleaningConfig(), case_id=path.name)
    touching = _touching_tumors(lab)
    assert touching, "every KiTS19 case has a tumor on the kidney"
    for vox in touching:
        if len(vox) >= CleaningConfig().min_voxels:
            assert (cleaned[tuple(vox.T)] == TUMOR).all()
    assert not any(r.cls == TUMOR and r.reason != SMALL_COMPONENT for r in records)
    assert (cleaned == KIDNEY).sum() > 0.99 * (lab == KIDNEY).sum()


def test_real_kits_tumors_touching_kidney_kept(shared_data: Path):
    _check_kits_case(shared_data / "labels" / "kits19_case_00002_segmentation.nii.gz")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["00000", "00001"])
def test_real_kits_tumors_touching_kidney_kept_all(shared_data: Path, case: str):
    _check_kits_case(shared_data / "labels" / f"kits19_case_{case}_segmentation.nii.gz")


def test_clean_folder_uses_ct_body_mask_for_tumor_only_cases(tmp_path: Path):
    labels, images = tmp_path / "labels", tmp_path / "images"
    lab = box(np.zeros((20, 40, 40), np.uint8), (5, 9), (12, 16), (12, 16), TUMOR)
    box(lab, (5, 9), (1, 5), (1, 5), TUMOR)                        # in the air
    ct = np.full(lab.shape, -1000, np.int16)
    ct[:, 8:32, 8:32] = 40
    _write_case(labels, "t.nii.gz", lab)
    _write_case(images, "t_0000.nii.gz", ct)
    _write_case(labels, "u.nii.gz", lab)
    _write_case(images, "u_0000.nii.gz", ct[:, :, :30])            # wrong grid
    report = clean_folder(labels, tmp_path / "out", CleaningConfig(min_voxels=10), images)
    assert [(r.case, r.reason, r.bbox[1]) for r in report.records] == [("t", OUTSIDE_ABDOMEN, (1, 5))]
    assert [c.case for c in report.errors] == ["u"] and "grid" in report.errors[0].error
