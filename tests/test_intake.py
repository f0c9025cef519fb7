import json

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.cli import main as cli
from flareseg.data.intake import ImportFailed, import_dataset
from flareseg.data.sources import ImportConfigError, read_manifest
from flareseg.io import Geometry, InputError, geometry_mismatch, read_array, write_array

GEO = Geometry((10, 9, 8), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _case(root, cid, label_vals=(1, 14), img_dtype=np.int16, geo=GEO, lab_geo=None):
    img = np.full(geo.shape_zyx, -100, dtype=img_dtype)
    write_array(img, geo, root / "images" / f"{cid}_0000.nii.gz")
    lab = np.zeros(geo.shape_zyx, np.uint8)
    for i, v in enumerate(label_vals):
        lab[2 + i, 2:5, 2:5] = v
    write_array(lab, lab_geo or geo, root / "labels" / f"{cid}.nii.gz")


@pytest.fixture
def mixed(tmp_path):
    src = tmp_path / "src"
    _case(src, "good1", (1, 2, 14))
    _case(src, "good2", (14,))
    _case(src, "organs", (3,))
    _case(src, "nan", img_dtype=np.float32)
    a, g = read_array(src / "images" / "nan_0000.nii.gz")
    a[0, 0, 0] = np.nan
    write_array(a, g, src / "images" / "nan_0000.nii.gz")
    _case(src, "label17", (1, 17))
    shifted = Geometry(GEO.size, GEO.spacing, (5.0, 0.0, 0.0), GEO.direction)
    _case(src, "mismatch", lab_geo=shifted)
    (src / "images" / "corrupt_0000.nii.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    (src / "labels" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    _case(src, "four")
    sitk.WriteImage(sitk.JoinSeries([sitk.Image(8, 9, 10, sitk.sitkInt16)] * 2),
                    str(src / "images" / "four_0000.nii.gz"))
    (src / "unl").mkdir()
    write_array(np.zeros(GEO.shape_zyx, np.int16), GEO, src / "unl" / "u1_0000.nii.gz")
    return src


def test_mixed_folder_reports_each_bad_case_and_imports_the_rest(mixed, tmp_path):
    out = tmp_path / "Dataset001_X"
    rep = import_dataset(out, mixed / "images", mixed / "labels", mixed / "unl")
    assert set(rep.good) == {"good1", "good2", "organs", "u1"}
    reasons = {k: v["reason"] for k, v in rep.bad.items()}
    assert set(reasons) == {"nan", "label17", "mismatch", "corrupt", "four"}
    assert "non-finite" in reasons["nan"] and "nan_0000.nii.gz" in reasons["nan"]
    assert "[17]" in reasons["label17"] and "label17.nii.gz" in reasons["label17"]
    assert "origin" in reasons["mismatch"]
    assert "unreadable" in reasons["corrupt"]
    assert "3-D" in reasons["four"]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "good1_0000.nii.gz", "good2_0000.nii.gz", "organs_0000.nii.gz"]
    assert [p.name for p in (out / "imagesUnlabeled").iterdir()] == ["u1_0000.nii.gz"]
    types = json.loads((out / "label_types.json").read_text())
    assert types == {"good1": [1, 2, 14], "good2": [14], "organs": [3]}
    pools = json.loads((out / "cases.json").read_text())
    assert pools == {"labeled": ["good1", "organs"], "tumor_only": ["good2"], "unlabeled": ["u1"]}
    report = json.loads((out / "import_report.json").read_text())
    assert report["label_type_source"] == "labels" and "no manifest" in report["label_type_note"]
    assert report["n_bad"] == 5
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 3 and ds["labels"]["tumor"] == 14
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # nothing half-written
    with pytest.raises(ImportFailed) as e:
        import_dataset(tmp_path / "strict", mixed / "images", mixed / "labels", strict=True)
    assert set(e.value.report.bad) == set(reasons)
    assert not (tmp_path / "strict").exists()   # validated first: nothing written


def test_manifest_gives_label_types_and_rerun_is_skipped(tmp_path):
    src = tmp_path / "src"
    _case(src, "a", (1,))
    _case(src, "b", (14,))
    (src / "m.csv").write_text("case_id,annotated\na,1 2 3 14\nb,14\n")
    out = tmp_path / "ds"
    rep = import_dataset(out, src / "images", src / "labels", manifest=src / "m.csv")
    assert rep.cases["a"]["label_type"] == [1, 2, 3, 14]  # absent kidney/spleen/tumor still annotated
    assert rep.label_type_source == "manifest"
    mtime = (out / "imagesTr" / "a_0000.nii.gz").stat().st_mtime_ns
    rep2 = import_dataset(out, src / "images", src / "labels", manifest=src / "m.csv")
    assert (out / "imagesTr" / "a_0000.nii.gz").stat().st_mtime_ns == mtime
    assert rep2.cases == rep.cases


def test_manifest_errors_name_file_and_line(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("case_id,annotated\na,1 99\n")
    with pytest.raises(ImportConfigError, match=r"m.csv:2: case a: class 99 is not a FLARE23 class"):
        read_manifest(m)
    m.write_text("case,classes\n")
    with pytest.raises(ImportConfigError, match=r"m.csv:1: .*header"):
        read_manifest(m)
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "none.csv")


def test_dicom_with_flipped_label_imports_on_the_image_grid(shared_data, tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    (src / "images" / "dcm01").symlink_to(shared_data / "ct" / "ts_example_ct_dicom")
    (src / "labels" / "dcm01.nii.gz").symlink_to(shared_data / "ct" / "ts_example_ct_dicom_seg_flare.nii.gz")
    out = tmp_path / "ds"
    rep = import_dataset(out, src / "images", src / "labels")
    assert set(rep.good) == {"dcm01"}, rep.bad
    assert "re-gridded" in rep.cases["dcm01"]["notes"][0]
    img = sitk.ReadImage(str(out / "imagesTr" / "dcm01_0000.nii.gz"))
    lab = sitk.ReadImage(str(out / "labelsTr" / "dcm01.nii.gz"))
    assert not geometry_mismatch(Geometry.of(img), Geometry.of(lab))
    assert img.GetSize() == (512, 512, 20)
    # the re-gridded label equals the original at the same physical points
    orig = sitk.ReadImage(str(shared_data / "ct" / "ts_example_ct_dicom_seg_flare.nii.gz"))
    oa, la = sitk.GetArrayFromImage(orig), sitk.GetArrayFromImage(lab)
    np.testing.assert_array_equal(la, oa[:, ::-1, :])
    assert set(np.unique(la)) == {0, 1, 3, 4, 5, 6, 7, 11}


def test_kits_permuted_direction_import_preserves_geometry(shared_data, tmp_path):
    arr, geo = read_array(shared_data / "labels" / "kits19_case_00002_segmentation.nii.gz")
    import fastremap
    lab = fastremap.remap(arr, {0: 0, 1: 2, 2: 14}, in_place=False).astype(np.uint8)
    src = tmp_path / "src"
    write_array(lab, geo, src / "labels" / "kits2.nii.gz")
    write_array(np.zeros(arr.shape, np.int16), geo, src / "images" / "kits2_0000.nii.gz")
    rc = cli(["import", "--images", str(src / "images"), "--labels", str(src / "labels"),
              "--out", str(tmp_path / "ds"), "--keep-orientation"])
    assert rc == 0
    back, g2 = read_array(tmp_path / "ds" / "labelsTr" / "kits2.nii.gz")
    assert not geometry_mismatch(geo, g2)
    np.testing.assert_array_equal(back, lab)
    assert json.loads((tmp_path / "ds" / "label_types.json").read_text()) == {"kits2": [2, 14]}


def test_import_turns_every_case_to_one_orientation(shared_data, tmp_path):
    """The real KiTS mask (permuted, flipped direction): imported axial LPS ascending (direction the
    identity), every voxel at the same physical position with the same label, image and label alike."""
    src_lab = sitk.ReadImage(str(shared_data / "labels" / "kits19_case_00002_segmentation.nii.gz"))
    assert not np.allclose(src_lab.GetDirection(), np.eye(3).ravel())
    arr = sitk.GetArrayFromImage(src_lab)
    lab = sitk.GetImageFromArray(np.where(arr == 2, 14, np.where(arr == 1, 2, 0)).astype(np.uint8))
    lab.CopyInformation(src_lab)
    img = sitk.GetImageFromArray(np.arange(arr.size, dtype=np.int32).reshape(arr.shape) % 2000 - 1000)
    img = sitk.Cast(img, sitk.sitkInt16)
    img.CopyInformation(src_lab)
    (tmp_path / "src" / "labels").mkdir(parents=True)
    (tmp_path / "src" / "images").mkdir()
    sitk.WriteImage(lab, str(tmp_path / "src" / "labels" / "kits2.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / "src" / "images" / "kits2_0000.nii.gz"))
    rep = import_dataset(tmp_path / "ds", tmp_path / "src" / "images", tmp_path / "src" / "labels")
    assert rep.cases["kits2"]["reoriented"] is True
    for name, orig in (("labelsTr/kits2.nii.gz", lab), ("imagesTr/kits2_0000.nii.gz", img)):
        out = sitk.ReadImage(str(tmp_path / "ds" / name))
        np.testing.assert_allclose(out.GetDirection(), np.eye(3).ravel(), atol=1e-6)
        o, a = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(orig)
        assert sorted(o.shape) == sorted(a.shape) and o.sum(dtype=np.int64) == a.sum(dtype=np.int64)
        # a few voxels: same physical point, same value
        rng = np.random.default_rng(0)
        for idx in rng.integers(0, np.array(a.shape), size=(20, 3)):
            p = orig.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]])
            j = out.TransformPhysicalPointToIndex(p)
            assert o[j[2], j[1], j[0]] == a[tuple(idx)]


def test_cli_help_explains_inputs_and_outputs(capsys):
    with pytest.raises(SystemExit):
        cli(["import", "--help"])
    out = capsys.readouterr().out
    assert "label_types.json" in out and "--manifest" in out and "import_report.json" in out


def test_case_whose_id_ends_in_0000_pairs_image_and_label(tmp_path):
    # label PH_0000.nii.gz is case PH_0000 (labels carry no channel suffix), image PH_0000_0000.nii.gz too
    src = tmp_path / "src"
    _case(src, "PH_0000", (1,))
    _case(src, "PH_0001", (1,))
    rep = import_dataset(tmp_path / "Dataset001_X", src / "images", src / "labels")
    assert set(rep.good) == {"PH_0000", "PH_0001"} and not rep.bad


def _tree(root):
    import hashlib
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _listed(out):
    """(ids in imagesTr, labelsTr, imagesUnlabeled) and what the indexes say."""
    on_disk = tuple({p.name.split("_0000")[0].replace(".nii.gz", "") for p in (out / d).glob("*.nii.gz")}
                    for d in ("imagesTr", "labelsTr", "imagesUnlabeled"))
    pools = json.loads((out / "cases.json").read_text())
    listed = (set(pools["labeled"] + pools["tumor_only"]), set(json.loads((out / "label_types.json").read_text())),
              set(pools["unlabeled"]))
    return on_disk, listed, json.loads((out / "dataset.json").read_text())["numTraining"]


def test_rerun_is_idempotent_and_follows_changed_inputs(tmp_path):
    src = tmp_path / "src"
    for cid in ("a", "b", "c"):
        _case(src, cid, (1,))
    _case(src, "bad", (1, 17))
    (src / "unl").mkdir()
    out = tmp_path / "ds"
    rep = import_dataset(out, src / "images", src / "labels", num_processes=2)
    assert set(rep.good) == {"a", "b", "c"} and set(rep.bad) == {"bad"}
    stamp = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    rep2 = import_dataset(out, src / "images", src / "labels")   # same inputs: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamp
    assert rep2.cases == rep.cases
    # c leaves the inputs, a becomes unlabeled, b's output was deleted by hand
    (src / "images" / "c_0000.nii.gz").unlink()
    (src / "labels" / "c.nii.gz").unlink()
    (src / "labels" / "a.nii.gz").unlink()
    (src / "images" / "a_0000.nii.gz").rename(src / "unl" / "a_0000.nii.gz")
    (out / "imagesTr" / "b_0000.nii.gz").unlink()
    rep3 = import_dataset(out, src / "images", src / "labels", src / "unl")
    assert set(rep3.good) == {"a", "b"} and rep3.good["a"]["pool"] == "unlabeled"
    (tr, lab, unl), (pooled, typed, unl_listed), n = _listed(out)
    assert tr == lab == pooled == typed == {"b"} and unl == unl_listed == {"a"} and n == 1
    assert sorted(p.stem for p in (out / ".import").glob("*.json")) == ["a", "b", "bad"]


def test_strict_failure_leaves_an_existing_dataset_as_it_was(tmp_path, capsys):
    src = tmp_path / "src"
    _case(src, "a", (1,))
    out = tmp_path / "ds"
    assert cli(["import", "--images", str(src / "images"), "--labels", str(src / "labels"), "--out", str(out)]) == 0
    before = _tree(out)
    _case(src, "bad", (1, 17))
    _case(src, "new", (1,))
    rc = cli(["import", "--images", str(src / "images"), "--labels", str(src / "labels"), "--out", str(out),
              "--strict"])
    assert rc == 1 and _tree(out) == before
    rc = cli(["import", "--images", str(src / "images"), "--labels", str(src / "labels"), "--out", str(out)])
    assert rc == 1 and _listed(out)[0][0] == {"a", "new"}


def test_unlabeled_id_equal_to_a_labeled_one_refuses_the_run(tmp_path, caplog):
    src = tmp_path / "src"
    _case(src, "a", (1,))
    (src / "unl").mkdir()
    write_array(np.zeros(GEO.shape_zyx, np.int16), GEO, src / "unl" / "a_0000.nii.gz")
    out = tmp_path / "ds"
    rc = cli(["import", "--images", str(src / "images"), "--labels", str(src / "labels"),
              "--unlabeled", str(src / "unl"), "--out", str(out)])
    assert rc == 2 and not out.exists()
    line = next(r.getMessage() for r in caplog.records if "also a labeled case" in r.getMessage())
    assert "unl/a_0000.nii.gz" in line and "images/a_0000.nii.gz" in line


def test_scan_folder_reports_entries_that_cannot_be_cases(tmp_path, caplog):
    from flareseg.data.sources import scan_folder
    d = tmp_path / "images"
    write_array(np.zeros(GEO.shape_zyx, np.int16), GEO, d / "ok_0000.nii.gz")
    (d / "x.mhd").write_text("")          # .mhd pixel data (.raw) is not warned about
    (d / "x.raw").write_bytes(b"")
    (d / "notes.txt").write_text("hi")
    (d / ".hidden").write_text("")
    (d / "gone_0000.nii.gz").symlink_to(tmp_path / "missing.nii.gz")
    (d / "empty").mkdir()
    scan = scan_folder(d)
    assert set(scan.cases) == {"ok", "x"}
    assert "broken symlink" in scan.bad["gone"] and "empty folder, not a DICOM series" in scan.bad["empty"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "notes.txt" in warned[0]


def test_manifest_reports_every_bad_row_at_once_and_accepts_a_bom(tmp_path):
    m = tmp_path / "m.csv"
    m.write_bytes("\ufeffcase_id,annotated\na,1_2_14\nb,1 x\nc\na,3\nz,2\n\nu,1\n".encode("utf-8"))
    with pytest.raises(ImportConfigError) as e:
        read_manifest(m, labeled_ids={"a", "b", "c"}, unlabeled_ids={"u"})
    assert [p.split(": ", 1)[0].rsplit("/", 1)[1] for p in e.value.problems] == [
        "m.csv:3", "m.csv:4", "m.csv:5", "m.csv:6", "m.csv:8"]
    assert "unlabeled case" in e.value.problems[-1] and "not among the labeled" in e.value.problems[-2]
    m.write_bytes("\ufeffcase_id,annotated\na,1_2_14\nb,\n".encode("utf-8"))
    assert read_manifest(m) == {"a": (1, 2, 14), "b": ()}


def test_one_empty_folder_is_a_warning_all_empty_is_nothing_to_import(tmp_path, caplog):
    src = tmp_path / "src"
    _case(src, "a", (1,))
    (src / "unl").mkdir()
    rep = import_dataset(tmp_path / "ds", src / "images", src / "labels", src / "unl")
    assert set(rep.good) == {"a"}
    assert any("unl: nothing to import" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    with pytest.raises(ImportConfigError, match="unl: nothing to import"):
        import_dataset(tmp_path / "ds2", unlabeled_dir=src / "unl")
    assert not (tmp_path / "ds2").exists()
