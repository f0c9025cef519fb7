"""One case-listing and naming rule (flareseg/cases.py) and one set of input limits
(flareseg/image_check.py), shared by import, predict, evaluate and clean."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from flareseg.cases import case_name, folder_entries, list_cases
from flareseg.cleaning.folder import list_labels
from flareseg.data.sources import scan_folder
from flareseg.evaluation.evaluate import list_cases as evaluate_list_cases
from flareseg.image_check import SPACING_RANGE_MM, spacing_problem
from flareseg.inference.commands import collect_inputs
from flareseg.inference.predictor import validate_array
from flareseg.io import InputError


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")
    return folder


@pytest.mark.parametrize("name, channel_suffix, case", [
    ("FLARE23_0001_0000.nii.gz", True, "FLARE23_0001"),
    ("FLARE23_0001.nii.gz", True, "FLARE23_0001"),        # no channel suffix: the whole stem
    ("FLARE23_0000.nii.gz", False, "FLARE23_0000"),       # a label: _0000 is part of the name
    ("case.mha", True, "case"),
    ("a_0000_0000.nrrd", True, "a_0000"),
])
def test_case_name_rule(tmp_path, name, channel_suffix, case):
    assert case_name(tmp_path / name, channel_suffix) == case


def test_every_command_lists_a_folder_the_same_way(tmp_path, caplog):
    d = _touch(tmp_path / "in", "a_0000.nii.gz", "a_0001.nii.gz", "FLARE23_0001.nii.gz", "b.mha",
               ".hidden.nii.gz", "notes.txt")
    want = {"a": d / "a_0000.nii.gz", "FLARE23_0001": d / "FLARE23_0001.nii.gz", "b": d / "b.mha"}
    with caplog.at_level(logging.WARNING):
        assert list_cases(d) == want
    assert "a_0001.nii.gz: ignored: a further channel of case a" in caplog.text
    assert evaluate_list_cases(d) == want                         # evaluate
    assert dict(collect_inputs(d)) == want                        # predict
    assert scan_folder(d).cases == want                           # import
    # clean lists labels: no channel suffix, so a_0001 is a case of its own there
    assert [p.name for p in list_labels(d)] == ["FLARE23_0001.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz", "b.mha"]


def test_two_files_of_one_case(tmp_path):
    d = _touch(tmp_path / "in", "a_0000.nii.gz", "a.mha")
    with pytest.raises(InputError, match="case 'a' appears twice"):
        list_cases(d)
    assert "has 2 files" in scan_folder(d).bad["a"]               # import: one bad case, not the batch
    assert len(list_labels(_touch(tmp_path / "lab", "a.nii.gz", "a.mha"))) == 2   # clean reports the 2nd


def test_missing_folder_and_file_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        folder_entries(tmp_path / "nope")
    f = _touch(tmp_path, "x_0000.nii.gz") / "x_0000.nii.gz"
    with pytest.raises(InputError, match="is a regular file, not a folder"):
        folder_entries(f)
    assert list_cases(f) == {"x": f}


def test_one_spacing_limit_for_import_and_predict(tmp_path):
    import SimpleITK as sitk
    from flareseg.data.validate import check_image
    lo, hi = SPACING_RANGE_MM
    arr = np.arange(8 * 8 * 8, dtype=np.int16).reshape(8, 8, 8)
    for spacing, ok in [((lo, 1, 1), True), ((1, 1, hi), True), ((1, 1, 15.0), True),
                        ((1, 1, hi * 1.01), False), ((lo * 0.9, 1, 1), False), ((1, float("nan"), 1), False)]:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        results = []
        for check in (lambda: check_image(img, tmp_path / "x.nii.gz"),
                      lambda: validate_array(arr, spacing[::-1], "x.nii.gz")):
            try:
                check()
                results.append(True)
            except InputError as e:
                assert "outside the accepted range" in str(e) and "x.nii.gz: spacing" in str(e)
                results.append(False)
        assert results == [ok, ok], spacing
        assert (spacing_problem(spacing) is None) == ok
