"""Bad-input matrix for the user outputs of `flareseg predict` (issue 19: --preview, --per-class,
--roi-subset, --statistics with HU): each row one distinct bad input, checked against the whole
contract of issue 14 (exit code, one line naming the file/flag and the reason, no traceback, the
batch goes on, no temporary files, inputs and model md5-identical afterwards)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from flareseg.cli import main
from tiny_model import tiny_plans, write_model_folder
from tests.bad_input import ct_folder as _folder, check_predict_row


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("models") / "coarse",
                              plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)


# ------------------------------------------------------------------ rows
def _roi_row(*names, reason="not a class name"):
    def row(tmp, model, shared):
        inp = _folder(tmp, "a.nii.gz")
        return dict(argv=["-i", inp, "-o", tmp / "out", "--roi-subset", *names],
                    names=["--roi-subset", *names[-1:]], reason=reason, rc=2, inputs=[inp])
    row.__name__ = "roi_subset_" + ("_".join(names) or "empty")
    return row


def preview_hardlinked_to_input(tmp, model, shared):
    inp = _folder(tmp, "a.nii.gz")
    (tmp / "out").mkdir()
    os.link(inp / "a.nii.gz", tmp / "out" / "a_preview.png")
    return dict(argv=["-i", inp, "-o", tmp / "out", "--preview"], names=[str(tmp / "out" / "a_preview.png")],
                reason="would overwrite the input", rc=2, inputs=[inp])


def preview_symlink_to_input(tmp, model, shared):
    inp = _folder(tmp, "a.nii.gz")
    (tmp / "out").mkdir()
    (tmp / "out" / "a_preview.png").symlink_to(inp / "a.nii.gz")
    return dict(argv=["-i", inp / "a.nii.gz", "-o", tmp / "out", "--preview"],
                names=[str(tmp / "out" / "a_preview.png")], reason="would overwrite the input", rc=2,
                inputs=[inp])


def class_mask_hardlinked_to_input(tmp, model, shared):
    inp = _folder(tmp, "a.nii.gz")
    (tmp / "out" / "a").mkdir(parents=True)
    os.link(inp / "a.nii.gz", tmp / "out" / "a" / "liver.nii.gz")
    return dict(argv=["-i", inp, "-o", tmp / "out", "--per-class"], names=[str(tmp / "out" / "a" / "liver.nii.gz")],
                reason="would overwrite the input", rc=2, inputs=[inp])


def class_masks_into_dicom_folder(tmp, model, shared):
    dcm = tmp / "series" / "p1"
    shutil.copytree(shared / "ct" / "ts_example_ct_dicom", dcm)
    return dict(argv=["-i", dcm, "-o", tmp / "series", "--roi-subset", "liver"],
                names=[str(dcm / "liver.nii.gz"), str(dcm)], reason="would be written into the input folder",
                rc=2, inputs=[dcm])


def preview_batch_with_broken_case(tmp, model, shared):
    inp = _folder(tmp, "good_0000.nii.gz")
    (inp / "broken.nii.gz").write_bytes(b"not an image")
    out = tmp / "out"
    return dict(argv=["-i", inp, "-o", out, "--preview", "--statistics", "--roi-subset", "liver"],
                names=["broken.nii.gz"], reason="failed", rc=1, inputs=[inp], outputs=[out],
                done=[out / "good_preview.png", out / "good" / "liver.nii.gz", out / "statistics.json"])


ROWS = [
    _roi_row("livr"), _roi_row("liver", "Liver"), _roi_row("14"), _roi_row("background"),
    _roi_row(reason="expected at least one argument"),
    preview_hardlinked_to_input, preview_symlink_to_input, class_mask_hardlinked_to_input,
    class_masks_into_dicom_folder, preview_batch_with_broken_case,
]


@pytest.mark.parametrize("row", ROWS, ids=[r.__name__ for r in ROWS])
def test_predict_user_outputs_bad_input(row, tmp_path, model, shared_data, capsys, caplog):
    r = row(tmp_path, model, shared_data)
    argv = [str(a) for a in r["argv"]] + ["-m", str(model)]
    check_predict_row(main, r, argv, model, tmp_path, capsys, caplog)
    if r["rc"] != 2:
        stats = json.loads((tmp_path / "out" / "statistics.json").read_text())
        assert set(stats) == {"good"} and "hu" in stats["good"]
