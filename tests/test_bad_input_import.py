"""Bad-input matrix for `flareseg import` (issue 14): one row per distinct bad input.

Each row builds a tiny source tree with one good case ``good`` and the bad input, runs
``flareseg import`` in-process and checks the contract (exit code, one line naming the file and the
reason, no traceback, the good case imported when the batch goes on, no temp files, inputs
md5-identical) and that the dataset folder lists exactly what is on disk (or was never created).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bad_input import check_contract, md5_tree, run_command
from flareseg.cli import main
from flareseg.io import Geometry, write_array

GEO = Geometry((8, 7, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def write_case(src: Path, cid: str, label: np.ndarray | None = None, folder: str = "images") -> None:
    write_array(np.zeros(GEO.shape_zyx, np.int16), GEO, src / folder / f"{cid}_0000.nii.gz")
    if label is not None or folder == "images":
        write_array(label if label is not None else organ_label(), GEO, src / "labels" / f"{cid}.nii.gz")


def organ_label(dtype=np.uint8) -> np.ndarray:
    lab = np.zeros(GEO.shape_zyx, dtype)
    lab[1:3, 2:4, 2:4] = 1
    lab[3:5, 2:4, 2:4] = 14
    return lab


def assert_dataset_matches_disk(out: Path) -> None:
    """dataset.json, label_types.json and cases.json list exactly the files of imagesTr, labelsTr and
    imagesUnlabeled (the dataset nnU-Net and later stages will read)."""
    def ids(sub: str, strip: str) -> set[str]:
        return {p.name[: -len(strip)] for p in (out / sub).glob("*.nii.gz")} if (out / sub).is_dir() else set()
    tr, lab, unl = ids("imagesTr", "_0000.nii.gz"), ids("labelsTr", ".nii.gz"), ids("imagesUnlabeled", "_0000.nii.gz")
    ds = json.loads((out / "dataset.json").read_text())
    types = json.loads((out / "label_types.json").read_text())
    pools = json.loads((out / "cases.json").read_text())
    assert tr == lab == set(types), (tr, lab, types)
    assert ds["numTraining"] == len(tr)
    assert set(pools["labeled"]) | set(pools["tumor_only"]) == tr and set(pools["unlabeled"]) == unl


# --- rows: each setup writes its bad input into ``src`` and returns argument overrides ---------------

def two_files_one_id(src):
    write_case(src, "bad")
    sitk.WriteImage(sitk.ReadImage(str(src / "images" / "bad_0000.nii.gz")), str(src / "images" / "bad_0000.nrrd"))
    return {}


def broken_image_link(src):
    (src / "labels").mkdir(parents=True, exist_ok=True)
    write_array(organ_label(), GEO, src / "labels" / "bad.nii.gz")
    (src / "images" / "bad_0000.nii.gz").symlink_to(src / "gone" / "bad_0000.nii.gz")
    return {}


def broken_label_link(src):
    write_array(np.zeros(GEO.shape_zyx, np.int16), GEO, src / "images" / "bad_0000.nii.gz")
    (src / "labels" / "bad.nii.gz").symlink_to(src / "gone" / "bad.nii.gz")
    return {}


def empty_subfolder(src):
    (src / "images" / "bad").mkdir()
    return {}


def non_dicom_subfolder(src):
    (src / "images" / "bad").mkdir()
    (src / "images" / "bad" / "notes.txt").write_text("not DICOM")
    return {}


def image_2d_no_label(src):
    sitk.WriteImage(sitk.Image(8, 7, sitk.sitkInt16), str(src / "images" / "bad_0000.nii.gz"))
    return {}


def image_4d_no_label(src):
    sitk.WriteImage(sitk.JoinSeries([sitk.Image(8, 7, 6, sitk.sitkInt16)] * 2), str(src / "images" / "bad_0000.nii.gz"))
    return {}


def no_label_file(src):
    write_array(np.zeros(GEO.shape_zyx, np.int16), GEO, src / "images" / "bad_0000.nii.gz")
    return {}


def label_without_image(src):
    write_array(organ_label(), GEO, src / "labels" / "bad.nii.gz")
    return {}


def corrupt_image(src):
    (src / "images" / "bad_0000.nii.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    write_array(organ_label(), GEO, src / "labels" / "bad.nii.gz")
    return {}


def label_out_of_range(src):
    lab = organ_label()
    lab[0, 0, 0] = 17
    write_case(src, "bad", lab)
    return {}


def label_geometry_mismatch(src):
    write_array(np.zeros(GEO.shape_zyx, np.int16), GEO, src / "images" / "bad_0000.nii.gz")
    small = Geometry((8, 7, 5), GEO.spacing, GEO.origin, GEO.direction)
    write_array(np.zeros(small.shape_zyx, np.uint8), small, src / "labels" / "bad.nii.gz")
    return {}


def label_not_integer(src):
    lab = organ_label(np.float32)
    lab[1, 2, 2] = 1.5
    write_case(src, "bad", lab)
    return {}


def strict_with_bad_case(src):
    label_out_of_range(src)
    return {"--strict": True}


def unlabeled_duplicates_labeled(src):
    write_array(np.zeros(GEO.shape_zyx, np.int16), GEO, src / "unl" / "good_0000.nii.gz")
    write_array(np.zeros(GEO.shape_zyx, np.int16), GEO, src / "unl" / "u1_0000.nii.gz")
    return {"--unlabeled": src / "unl"}


def empty_input_folders(src):
    for p in [*(src / "images").iterdir(), *(src / "labels").iterdir()]:
        p.unlink()
    return {}


def empty_labels_folder(src):
    for p in (src / "labels").iterdir():
        p.unlink()
    return {}


def manifest(rows: str):
    def setup(src):
        (src / "manifest.csv").write_text("case_id,annotated\ngood,1 14\n" + rows)
        return {"--manifest": src / "manifest.csv"}
    return setup


def manifest_header(src):
    (src / "manifest.csv").write_text("case,classes\ngood,1 14\n")
    return {"--manifest": src / "manifest.csv"}


def manifest_missing_row(src):
    write_case(src, "bad")
    return manifest("")(src)


def missing(arg: str):
    return lambda src: {arg: src / "nope"}


def out_under_file(src):
    (src / "afile").write_text("x")
    return {"--out": src / "afile" / "ds"}


def out_inside_input(src):
    return {"--out": src / "images" / "ds"}


# id, setup, exit code, names on the line, reason on the line, outcome: "batch" (the good case is
# imported, the bad one not), "nothing" (refused or --strict: no output folder), "no-case" (no good case)
ROWS = [
    ("two-files-one-case-id", two_files_one_id, 1, ["bad_0000.nii.gz", "bad_0000.nrrd"], "2 files", "batch"),
    ("broken-symlink-image", broken_image_link, 1, ["bad_0000.nii.gz"], "broken symlink", "batch"),
    ("broken-symlink-label", broken_label_link, 1, ["labels/bad.nii.gz"], "broken symlink", "batch"),
    ("empty-subfolder", empty_subfolder, 1, ["images/bad"], "empty folder, not a DICOM series", "batch"),
    ("non-dicom-subfolder", non_dicom_subfolder, 1, ["images/bad"], "no DICOM series", "batch"),
    ("2d-image-no-label", image_2d_no_label, 1, ["bad_0000.nii.gz"], "expected a 3-D image", "batch"),
    ("4d-image-no-label", image_4d_no_label, 1, ["bad_0000.nii.gz"], "expected a 3-D image", "batch"),
    ("image-without-label", no_label_file, 1, ["bad_0000.nii.gz"], "no label file", "batch"),
    ("label-without-image", label_without_image, 1, ["bad.nii.gz"], "label without an image", "batch"),
    ("corrupt-image", corrupt_image, 1, ["bad_0000.nii.gz"], "unreadable", "batch"),
    ("label-value-17", label_out_of_range, 1, ["bad.nii.gz", "[17]"], "outside 0..14", "batch"),
    ("label-geometry-mismatch", label_geometry_mismatch, 1, ["bad.nii.gz", "size"], "geometry does not match", "batch"),
    ("label-not-integer", label_not_integer, 1, ["bad.nii.gz"], "not integers", "batch"),
    ("strict-with-bad-case", strict_with_bad_case, 1, ["bad.nii.gz"], "outside 0..14", "nothing"),
    ("unlabeled-id-is-labeled", unlabeled_duplicates_labeled, 2, ["unl/good_0000.nii.gz", "images/good_0000.nii.gz"],
     "also a labeled case", "nothing"),
    ("empty-input-folders", empty_input_folders, 2, ["src/images"], "nothing to import", "nothing"),
    ("empty-labels-folder", empty_labels_folder, 1, ["good_0000.nii.gz", "src/labels"], "no label file", "no-case"),
    ("manifest-unknown-class", manifest("x,1 99\n"), 2, ["manifest.csv:3"], "not a FLARE23 class", "nothing"),
    ("manifest-non-integer", manifest("x,1 liver\n"), 2, ["manifest.csv:3", "'liver'"], "not an integer", "nothing"),
    ("manifest-unknown-case", manifest("nosuch,1\n"), 2, ["manifest.csv:3", "nosuch"], "unknown case id", "nothing"),
    ("manifest-duplicate-row", manifest("good,1\n"), 2, ["manifest.csv:3", "good"], "listed twice", "nothing"),
    ("manifest-missing-column", manifest("good2\n"), 2, ["manifest.csv:3"], "expected 2 columns", "nothing"),
    ("manifest-extra-column", manifest("x,1,14\n"), 2, ["manifest.csv:3"], "expected 2 columns", "nothing"),
    ("manifest-bad-header", manifest_header, 2, ["manifest.csv:1"], "header", "nothing"),
    ("manifest-no-row-for-case", manifest_missing_row, 1, ["manifest.csv", "bad"], "no row for case", "batch"),
    ("manifest-file-missing", missing("--manifest"), 2, ["nope"], "does not exist", "nothing"),
    ("images-folder-missing", missing("--images"), 2, ["nope"], "does not exist", "nothing"),
    ("labels-folder-missing", missing("--labels"), 2, ["nope"], "does not exist", "nothing"),
    ("unlabeled-folder-missing", missing("--unlabeled"), 2, ["nope"], "does not exist", "nothing"),
    ("out-under-a-file", out_under_file, 2, ["afile/ds", "afile"], "is not a folder", "nothing"),
    ("out-inside-an-input", out_inside_input, 2, ["images/ds"], "overlaps the input", "nothing"),
]


@pytest.mark.parametrize("setup,rc,names,reason,outcome", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_import_bad_input(tmp_path, capsys, caplog, setup, rc, names, reason, outcome):
    src = tmp_path / "src"
    write_case(src, "good")
    (src / "labels").mkdir(exist_ok=True)
    over = setup(src)
    out = over.get("--out", tmp_path / "ds")
    args = {"--images": src / "images", "--labels": src / "labels", "--out": out, **over}
    argv = ["import"] + [x for k, v in args.items() for x in ([k] if v is True else [k, v])]
    before = md5_tree([src])
    res = run_command(main, argv, capsys, caplog)
    batch = outcome == "batch"
    done = [out / "imagesTr" / "good_0000.nii.gz", out / "labelsTr" / "good.nii.gz"] if batch else []
    check_contract(res, rc=rc, names=names, reason=reason, inputs_before=before, inputs=[src],
                   outputs=[out] if out.is_dir() else [], done=done)
    if outcome == "nothing":   # refused before any work, or --strict with a bad case: nothing written
        assert not out.exists()
    else:
        assert_dataset_matches_disk(out)
        assert not (out / "imagesTr" / "bad_0000.nii.gz").exists()
    if reason == "expected a 3-D image":   # the image's own problem, not its missing label
        assert not [ln for ln in res.lines if "no label file" in ln]
