"""Bad-input matrix for `flareseg predict` (issue 14): each row one distinct bad input, checked
against the whole contract (exit code, one line naming the file/flag and the reason, no traceback,
the batch goes on, no temporary files, inputs and model md5-identical afterwards)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.cli import main
from tiny_model import tiny_plans, write_model_folder
from tests.bad_input import tiny_ct as _ct, ct_folder as _folder, check_predict_row


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # inside a parent folder so the "user passed the parent" row has one to pass
    return write_model_folder(tmp_path_factory.mktemp("models") / "coarse",
                              plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)


# ------------------------------------------------------------------ rows
# each returns the argv tail (after -m is added unless given), what the line must name, the reason,
# the exit code, what counts as input and output, and the good cases' outputs (batch rows)

def out_is_input_folder(tmp, model):
    inp = _folder(tmp, "a_0000.nii.gz")   # would not even clobber a.nii.gz: refused all the same
    return dict(argv=["-i", inp, "-o", inp], names=[str(inp)], reason="is the input folder", rc=2, inputs=[inp])


def out_is_input_file(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    f = inp / "a.nii.gz"
    return dict(argv=["-i", f, "-o", f], names=[str(f)], reason="would overwrite the input", rc=2,
                inputs=[inp])


def case_output_is_input(tmp, model):
    # the folder holding the input file as -o: OUT/a.nii.gz is the input itself
    inp = _folder(tmp, "a.nii.gz")
    return dict(argv=["-i", inp / "a.nii.gz", "-o", inp], names=[str(inp / "a.nii.gz")],
                reason="would overwrite the input", rc=2, inputs=[inp])


def out_symlink_to_input(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    out = tmp / "out"
    out.mkdir()
    (out / "link.nii.gz").symlink_to(inp / "a.nii.gz")
    return dict(argv=["-i", inp / "a.nii.gz", "-o", out / "link.nii.gz"],
                names=[str(out / "link.nii.gz"), str(inp / "a.nii.gz")], reason="would overwrite the input",
                rc=2, inputs=[inp], outputs=[out])


def out_hardlink_to_input(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    out = tmp / "out"
    out.mkdir()
    os.link(inp / "a.nii.gz", out / "copy.nii.gz")
    return dict(argv=["-i", inp / "a.nii.gz", "-o", out / "copy.nii.gz"],
                names=[str(out / "copy.nii.gz"), str(inp / "a.nii.gz")], reason="would overwrite the input",
                rc=2, inputs=[inp], outputs=[out])


def out_folder_symlink_to_input_folder(tmp, model):
    inp = _folder(tmp, "a_0000.nii.gz")
    (tmp / "alias").symlink_to(inp, target_is_directory=True)
    return dict(argv=["-i", inp, "-o", tmp / "alias"], names=[str(tmp / "alias"), str(inp)],
                reason="is the input folder", rc=2, inputs=[inp])


def case_output_hardlinked_to_input(tmp, model):
    # a batch: OUT/a.nii.gz already exists as a hard link of the input a_0000.nii.gz
    inp = _folder(tmp, "a_0000.nii.gz")
    out = tmp / "out"
    out.mkdir()
    os.link(inp / "a_0000.nii.gz", out / "a.nii.gz")
    return dict(argv=["-i", inp, "-o", out], names=[str(out / "a.nii.gz"), str(inp / "a_0000.nii.gz")],
                reason="would overwrite the input", rc=2, inputs=[inp], outputs=[out])


def report_is_input(tmp, model):
    inp = _folder(tmp, "a.nii.gz", "b.nii.gz")
    return dict(argv=["-i", inp, "-o", tmp / "out", "--report", inp / "b.nii.gz"],
                names=[str(inp / "b.nii.gz")], reason="would overwrite the input", rc=2, inputs=[inp],
                outputs=[tmp / "out"])


def report_is_model_plans(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    return dict(argv=["-i", inp, "-o", tmp / "out", "--report", model / "plans.json"],
                names=[str(model / "plans.json")], reason="would overwrite the input", rc=2, inputs=[inp])


def out_is_existing_file(tmp, model):
    inp = _folder(tmp, "a.nii.gz", "b.nii.gz")
    (tmp / "notes.txt").write_text("mine")
    return dict(argv=["-i", inp, "-o", tmp / "notes.txt"], names=[str(tmp / "notes.txt")],
                reason="is an existing file", rc=2, inputs=[inp, tmp / "notes.txt"])


def model_missing(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    return dict(argv=["-i", inp, "-o", tmp / "out", "-m", tmp / "no_such_model"],
                names=[str(tmp / "no_such_model")], reason="does not exist", rc=2, inputs=[inp])


def model_parent_folder(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    return dict(argv=["-i", inp, "-o", tmp / "out", "-m", model.parent],
                names=[str(model.parent), str(model)], reason="did you mean", rc=2, inputs=[inp])


def model_fold_folder(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    return dict(argv=["-i", inp, "-o", tmp / "out", "-m", model / "fold_0"],
                names=[str(model / "fold_0"), f"did you mean {model}?"], reason="not a model folder", rc=2,
                inputs=[inp])


def model_without_checkpoints(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    bare = tmp / "bare"
    bare.mkdir()
    for n in ("plans.json", "dataset.json"):
        shutil.copy(model / n, bare / n)
    (bare / "fold_0").mkdir()
    return dict(argv=["-i", inp, "-o", tmp / "out", "-m", bare], names=[str(bare), "fold_*/checkpoint_*.pth"],
                reason="not a model folder", rc=2, inputs=[inp, bare])


def model_plans_not_json(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    broken = tmp / "broken_model"
    shutil.copytree(model, broken)
    (broken / "plans.json").write_text('{"configurations": ')
    return dict(argv=["-i", inp, "-o", tmp / "out", "-m", broken], names=[str(broken / "plans.json")],
                reason="not readable as JSON", rc=2, inputs=[inp, broken])


def model_dataset_without_labels(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    other = tmp / "other_model"
    shutil.copytree(model, other)
    (other / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}}))
    return dict(argv=["-i", inp, "-o", tmp / "out", "-m", other], names=[str(other / "dataset.json")],
                reason="has no 'labels'", rc=2, inputs=[inp, other])


def fold_missing(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    return dict(argv=["-i", inp, "-o", tmp / "out", "--fold", "3"],
                names=[str(model), "available folds: 0"], reason="fold 3 not found", rc=2, inputs=[inp])


def checkpoint_truncated(tmp, model):
    inp = _folder(tmp, "a.nii.gz")
    cut = tmp / "cut_model"
    shutil.copytree(model, cut)
    ck = cut / "fold_0" / "checkpoint_final.pth"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 3])   # a download or copy cut short
    return dict(argv=["-i", inp, "-o", tmp / "out", "-m", cut], names=[str(ck)],
                reason="corrupt checkpoint", rc=2, inputs=[inp, cut])


def checkpoint_untrusted(tmp, model):
    import torch
    inp = _folder(tmp, "a.nii.gz")
    odd = tmp / "odd_model"
    shutil.copytree(model, odd)
    ck = odd / "fold_0" / "checkpoint_final.pth"
    state = torch.load(ck, weights_only=True)
    state["hook"] = os.path.join          # any pickled callable: code a weights-only load refuses
    torch.save(state, ck)
    return dict(argv=["-i", inp, "-o", tmp / "out", "-m", odd], names=[str(ck), "--trust-model"],
                reason="untrusted checkpoint", rc=2, inputs=[inp, odd])


def _flag_row(flag, value, reason):
    def row(tmp, model):
        inp = _folder(tmp, "a.nii.gz")
        return dict(argv=["-i", inp, "-o", tmp / "out", flag, value], names=[flag], reason=reason, rc=2,
                    inputs=[inp])
    row.__name__ = f"flag{flag.replace('-', '_')}_{value}"
    return row


def _batch_row(name, write_bad, reason):
    """A folder with a good case and a bad one: exit 1, the bad file named, the good case written."""
    def row(tmp, model):
        inp = _folder(tmp, "good_0000.nii.gz")
        bad = inp / name
        write_bad(bad)
        out = tmp / "out"
        return dict(argv=["-i", inp, "-o", out, "--statistics"], names=[str(bad)], reason=reason, rc=1,
                    inputs=[inp], outputs=[out], done=[out / "good.nii.gz", out / "predict_report.json",
                                                       out / "statistics.json"])
    row.__name__ = f"batch_{name}"
    return row


def _four_d(path):
    vol = sitk.GetImageFromArray(np.zeros((8, 16, 16), np.int16))
    img = sitk.JoinSeries([vol, vol])   # a 4-D (x, y, z, t) image, as a dynamic CT is stored
    assert img.GetDimension() == 4
    sitk.WriteImage(img, str(path))


def _two_d(path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(path))


ROWS = [
    out_is_input_folder, out_is_input_file, case_output_is_input, out_symlink_to_input,
    out_hardlink_to_input, out_folder_symlink_to_input_folder, case_output_hardlinked_to_input,
    report_is_input, report_is_model_plans, out_is_existing_file,
    model_missing, model_parent_folder, model_fold_folder, model_without_checkpoints,
    model_plans_not_json, model_dataset_without_labels, fold_missing, checkpoint_truncated,
    checkpoint_untrusted,
    _flag_row("--batch-windows", "-1", ">= 0"),
    _flag_row("--batch-windows", "nan", ">= 0"),
    _flag_row("--step-size", "0", "(0, 1]"),
    _flag_row("--step-size", "1.5", "(0, 1]"),
    _flag_row("--step-size", "nan", "(0, 1]"),
    _flag_row("--skip-threshold", "0", ">= 1"),
    _flag_row("--skip-threshold", "many", "expected an integer >= 1"),
    _batch_row("nan.mha", lambda p: _ct(p, dtype=np.float32, fill=np.nan), "NaN"),
    _batch_row("constant.nii.gz", lambda p: _ct(p, fill=-1000), "constant"),
    _batch_row("movie_0000.nii.gz", _four_d, "3-D"),
    _batch_row("slice_0000.nii.gz", _two_d, "3-D"),
    _batch_row("notes.nii.gz", lambda p: p.write_text("not an image"), "corrupt file"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.__name__ for r in ROWS])
def test_predict_bad_input(row, tmp_path, model, capsys, caplog):
    r = row(tmp_path, model)
    argv = [str(a) for a in r["argv"]]
    if "-m" not in argv:
        argv += ["-m", str(model)]
    check_predict_row(main, r, argv, model, tmp_path, capsys, caplog)
