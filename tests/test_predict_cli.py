"""`flareseg predict`: naming, reports, statistics, failing cases, real files."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.cli import main
from flareseg.cases import case_name
from flareseg.inference.commands import key_value
from flareseg.inference.output_plan import check_outputs, collect_inputs, planned_outputs
from flareseg.inference.predictor import choose_dtype, cpu_flags
from flareseg.inference.statistics import label_statistics
from flareseg.io import Geometry, InputError, geometry_mismatch, read_image
from flareseg.nnunet.folder_check import check_model_folder, find_model_folders
from flareseg.write_guard import same_files
from tiny_model import tiny_plans, write_model_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # FLARE23 labels; 3 mm spacing keeps the real files at a few dozen windows
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                              seed=1)


def _ct(path, shape=(16, 40, 36), spacing=(1.5, 1.5, 2.5)):
    arr = np.full(shape, -1000, dtype=np.int16)
    arr[:, 8:32, 6:30] = 60
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return img


def test_case_names_and_collection(tmp_path):
    _ct(tmp_path / "a_0000.nii.gz")
    _ct(tmp_path / "a_0001.nii.gz")   # second channel: ignored
    _ct(tmp_path / "b.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    assert case_name(tmp_path / "a_0000.nii.gz") == "a"
    assert [n for n, _ in collect_inputs(tmp_path)] == ["a", "b"]


def test_folder_with_a_bad_case_continues(tmp_path, model_dir):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    img = _ct(inp / "good_0000.nii.gz")
    (inp / "broken.nii.gz").write_bytes(b"not an image")
    rc = main(["predict", "-i", str(inp), "-o", str(out), "-m", str(model_dir), "--device", "cpu",
               "--statistics", "-q"])
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == [".flareseg-written.jsonl", "good.nii.gz", "predict_report.json",
                                                     "statistics.json"]
    assert geometry_mismatch(Geometry.of(sitk.ReadImage(str(out / "good.nii.gz"))), Geometry.of(img)) == []
    rep = json.loads((out / "predict_report.json").read_text())
    status = {c["case"]: c for c in rep["cases"]}
    assert status["good"]["status"] == "ok" and status["broken"]["status"] == "failed"
    assert "broken.nii.gz" in status["broken"]["error"]
    assert status["good"]["windows"]["windows_total"] > 0 and rep["device"] == "cpu"
    assert {"torch", "nnunetv2", "flareseg", "cc3d"} <= set(rep["versions"])
    assert "?" not in rep["versions"].values() and "not installed" not in rep["versions"].values()
    stats = json.loads((out / "statistics.json").read_text())
    assert set(stats) == {"good"} and "liver" in stats["good"]["volumes_ml"]
    assert "components" in stats["good"]["tumor"]


def test_label_statistics_volumes_and_tumor_burden():
    lab = np.zeros((10, 10, 10), dtype=np.uint8)
    lab[:2, :5, :5] = 1          # 50 voxels liver
    lab[5, 5, 5] = 14
    lab[8:10, 8:10, 8:10] = 14   # two tumor components: 1 + 8 voxels
    s = label_statistics(lab, (2.0, 1.0, 0.5), {0: "background", 1: "liver", 3: "spleen", 14: "tumor"})
    assert s["volumes_ml"] == {"liver": 0.05, "spleen": 0.0, "tumor": 0.009}
    assert s["tumor"] == {"volume_ml": 0.009, "components": 2, "largest_ml": 0.008}


def test_real_files_through_cli(tmp_path, model_dir, shared_data):
    nii = shared_data / "ct" / "ts_example_ct_sm.nii.gz"
    dcm = shared_data / "ct" / "ts_example_ct_dicom"
    assert main(["predict", "-i", str(nii), "-o", str(tmp_path / "x.nii.gz"), "-m", str(model_dir),
                 "--device", "cpu", "-q"]) == 0
    out = sitk.ReadImage(str(tmp_path / "x.nii.gz"))
    assert geometry_mismatch(Geometry.of(out), Geometry.of(sitk.ReadImage(str(nii)))) == []
    assert main(["predict", "-i", str(dcm), "-o", str(tmp_path / "d"), "-m", str(model_dir),
                 "--device", "cpu", "--no-skip", "-q"]) == 0
    out = sitk.ReadImage(str(tmp_path / "d" / "ts_example_ct_dicom.nii.gz"))
    assert geometry_mismatch(Geometry.of(out), Geometry.of(read_image(dcm))) == []


@pytest.mark.parametrize("flag", [[], ["--no-reorient"]])
def test_permuted_storage_through_cli(tmp_path, model_dir, flag):
    """A sagittally stored scan: reoriented unless --no-reorient; the output keeps the stored grid."""
    stored = sitk.PermuteAxes(_ct(tmp_path / "axial.nii.gz"), [2, 1, 0])  # array axis 0 = patient x
    sitk.WriteImage(stored, str(tmp_path / "sag.nii.gz"))
    assert main(["predict", "-i", str(tmp_path / "sag.nii.gz"), "-o", str(tmp_path / "out"), "-m",
                 str(model_dir), "--device", "cpu", "-q", *flag]) == 0
    out = sitk.ReadImage(str(tmp_path / "out" / "sag.nii.gz"))
    assert geometry_mismatch(Geometry.of(out), Geometry.of(stored)) == []
    rep = json.loads((tmp_path / "out" / "predict_report.json").read_text())
    assert rep["inference"]["reorient"] == (not flag)
    assert rep["cases"][0]["reoriented"] == (None if flag else [2, 1, 0])


@pytest.mark.parametrize("mode", ["bspline", "linear", "nnunet"])
def test_image_resampling_flag_writes_labels_on_the_input_grid(tmp_path, model_dir, mode):
    img = _ct(tmp_path / "c_0000.nii.gz", spacing=(1.1, 1.1, 4.5))  # anisotropic: stock's separate z
    out = tmp_path / "out"
    rc = main(["predict", "-i", str(tmp_path / "c_0000.nii.gz"), "-o", str(out), "-m", str(model_dir),
               "--device", "cpu", "--image-resampling", mode, "--no-skip", "-q"])
    assert rc == 0
    lab = sitk.ReadImage(str(out / "c.nii.gz"))
    assert geometry_mismatch(Geometry.of(lab), Geometry.of(img)) == []
    assert json.loads((out / "predict_report.json").read_text())["inference"]["image_resampling"] == mode


# ------------------------------------------------------------------ one settings path: --config, --set, flags

def test_config_set_and_flags_resolve_one_inference_config(tmp_path, model_dir):
    """The defaults, then --config's inference section, then --set, then the shortcut flags; the
    report lists the resolved config once and the predictor ran with it (its windows match an
    in-process FastPredictor built from that config, and differ from the defaults')."""
    from flareseg.config import InferenceConfig, to_dict
    from flareseg.inference.predictor import FastPredictor

    img = _ct(tmp_path / "a.nii.gz", shape=(40, 64, 64))   # several windows per axis
    cfg_file = tmp_path / "settings.yaml"
    cfg_file.write_text("inference:\n  step_size: 0.75\n  tta: true\n  batch_windows: 2\n"
                        "  image_resampling: linear\n  device: cpu\n")
    out = tmp_path / "out"
    assert main(["predict", "-i", str(tmp_path / "a.nii.gz"), "-o", str(out), "-m", str(model_dir),
                 "--config", str(cfg_file), "--set", "inference.batch_windows=3",
                 "--set", "inference.skip_grow=false", "--set", "inference.step_size=0.25",
                 "--step-size", "0.75", "--no-crop", "-q"]) == 0
    want = InferenceConfig(step_size=0.75, tta=True, batch_windows=3, image_resampling="linear",
                           skip_grow=False, crop_to_body=False, device="cpu")
    rep = json.loads((out / "predict_report.json").read_text())
    assert rep["inference"] == to_dict(want) and rep["config"] == str(cfg_file)
    assert "settings" not in rep and (rep["dtype"], rep["dtype_reason"]) == choose_dtype("auto", "cpu", cpu_flags())  # what ran, why
    ran = rep["cases"][0]["windows"]
    assert ran == FastPredictor(model_dir, want).run(img).stats["windows"]
    assert ran != FastPredictor(model_dir, device="cpu").run(img).stats["windows"]


def test_flags_alone_keep_the_config_defaults(tmp_path, model_dir):
    _ct(tmp_path / "a.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "-i", str(tmp_path / "a.nii.gz"), "-o", str(out), "-m", str(model_dir),
                 "--device", "cpu", "--no-skip", "-q"]) == 0
    from flareseg.config import InferenceConfig, to_dict
    rep = json.loads((out / "predict_report.json").read_text())
    assert rep["inference"] == to_dict(InferenceConfig(device="cpu", skip_windows=False))
    assert rep["config"] is None


# ------------------------------------------------------------------ refusing to overwrite inputs

def test_same_files_by_name_symlink_and_hard_link(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"ct a")
    b.write_bytes(b"ct b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link.nii.gz").symlink_to(a)
    os.link(b, tmp_path / "sub" / "hard.nii.gz")
    outs = [tmp_path / "sub" / ".." / "a.nii.gz",       # same file by name (unnormalised)
            tmp_path / "sub" / "link.nii.gz",           # a symlink to an input
            tmp_path / "sub" / "hard.nii.gz",           # a hard link of an input
            tmp_path / "sub" / "new.nii.gz"]            # a new file: fine
    hits = same_files([a, b], outs)
    assert hits == [(outs[0], a), (outs[1], a), (outs[2], b)]
    assert same_files([a], [b, tmp_path / "c.nii.gz"]) == []


def test_same_files_folders(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "in", target_is_directory=True)
    assert same_files([tmp_path / "in"], [tmp_path / "in"]) == [(tmp_path / "in", tmp_path / "in")]
    assert same_files([tmp_path / "in"], [tmp_path / "alias"]) == [(tmp_path / "alias", tmp_path / "in")]
    assert same_files([tmp_path / "in"], [tmp_path / "in" / "out"]) == []   # a subfolder is another path


def test_planned_outputs_every_file(tmp_path):
    cases = [("a", tmp_path / "a_0000.nii.gz"), ("b", tmp_path / "b.mha")]
    plan = planned_outputs(cases, tmp_path, tmp_path / "out", save_probabilities=True, statistics=True)
    out = tmp_path / "out"
    assert plan.folder == out
    assert sorted(plan.files) == sorted([out / "a.nii.gz", out / "b.nii.gz", out / "a.npz", out / "b.npz",
                                         out / "predict_report.json", out / "statistics.json"])
    one = tmp_path / "a_0000.nii.gz"
    one.write_bytes(b"x")
    plan = planned_outputs([("a", one)], one, tmp_path / "o" / "lab.nii.gz", report=tmp_path / "r.json")
    assert plan.files == [tmp_path / "o" / "lab.nii.gz", tmp_path / "r.json"] and plan.folder == tmp_path / "o"


def test_check_outputs_rules(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for n in ("a.nii.gz", "b_0000.nii.gz"):
        _ct(inp / n)
    cases = collect_inputs(inp)
    files = [p for _, p in cases]

    def problem(output, input_path=inp, report=None, cs=cases):
        return check_outputs(planned_outputs(cs, input_path, output, report=report), [input_path, *files])

    assert "is the input folder" in problem(inp)                     # -o == -i: refused even without clobbering
    assert problem(inp / "out") is None                              # a subfolder: nothing collides
    assert problem(tmp_path / "out") is None
    assert "would overwrite the input" in problem(tmp_path / "out", report=inp / "a.nii.gz")
    assert "--report" in problem(tmp_path / "out", report=inp / "a.nii.gz")
    assert "written twice" in problem(tmp_path / "out", report=tmp_path / "out" / "a.nii.gz")
    one = [("a", inp / "a.nii.gz")]
    assert "would overwrite the input" in problem(inp / "a.nii.gz", inp / "a.nii.gz", cs=one)  # file == file
    assert "would overwrite the input" in problem(inp, inp / "a.nii.gz", cs=one)   # OUT/a.nii.gz is the input
    assert problem(inp, inp / "b_0000.nii.gz", cs=[("b", inp / "b_0000.nii.gz")]) is None  # OUT/b.nii.gz is new


@pytest.mark.parametrize("output", ["a.nii.gz", "."])
def test_refused_before_the_model_loads(tmp_path, model_dir, output, caplog):
    """`-i a.nii.gz -o a.nii.gz` and `-i d -o d` exited 0 and replaced the CT with its label map."""
    _ct(tmp_path / "a.nii.gz")
    before = (tmp_path / "a.nii.gz").read_bytes()
    inp = tmp_path / ("a.nii.gz" if output != "." else "")
    rc = main(["predict", "-i", str(inp), "-o", str(tmp_path / output), "-m", str(model_dir),
               "--device", "cpu", "-q"])
    assert rc == 2 and (tmp_path / "a.nii.gz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]
    assert "would overwrite the input" in caplog.text or "is the input folder" in caplog.text
    # the refusal comes first: with no model folder at all the message is still about the output
    caplog.clear()
    assert main(["predict", "-i", str(inp), "-o", str(tmp_path / output), "-m", str(tmp_path / "none"),
                 "-q"]) == 2
    assert "input" in caplog.text and "model folder does not exist" not in caplog.text


def test_unwritable_output_folder_refused_before_the_model_loads(tmp_path, model_dir):
    """An existing output folder the user cannot write into: exit 2 up front, one line naming the
    folder, nothing written (it failed case by case, after loading the model, before).  Root writes
    anywhere, so as root the command runs without the capability to override permissions."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    _ct(tmp_path / "a.nii.gz")
    (tmp_path / "out").mkdir()
    os.chmod(tmp_path / "out", 0o555)
    try:
        r = subprocess.run([*prefix, sys.executable, "-m", "flareseg.cli", "predict", "-i", str(tmp_path / "a.nii.gz"),
                            "-o", str(tmp_path / "out"), "-m", str(model_dir), "--device", "cpu", "-q"],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    finally:
        os.chmod(tmp_path / "out", 0o755)
    assert r.returncode == 2, r.stderr
    assert f"{tmp_path / 'out'}: cannot create or write into the output folder (Permission denied)" in r.stderr
    assert "case" not in r.stderr and list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------ model folder and flags

def test_check_model_folder(tmp_path, model_dir):
    assert check_model_folder(model_dir, ["0"]) == model_dir
    with pytest.raises(InputError, match="does not exist"):
        check_model_folder(tmp_path / "nope")
    parent = tmp_path / "models"
    parent.mkdir()
    (parent / "coarse").symlink_to(model_dir, target_is_directory=True)
    with pytest.raises(InputError, match=f"did you mean {parent / 'coarse'}"):
        check_model_folder(parent)                               # the parent of the model folder
    with pytest.raises(InputError, match=f"did you mean {model_dir}"):
        check_model_folder(model_dir / "fold_0")                 # a fold folder
    with pytest.raises(InputError, match=f"the model folder is {model_dir}"):
        check_model_folder(model_dir / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(InputError, match=r"fold 1, 3 not found .*available folds: 0"):
        check_model_folder(model_dir, ["0", "1", "3"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="missing plans.json, dataset.json, fold_") as e:
        check_model_folder(empty)
    assert "did you mean" not in str(e.value) and "\n" not in str(e.value)


def test_find_model_folders_looks_a_few_levels_down(tmp_path, model_dir):
    deep = tmp_path / "results" / "Dataset001" / "Trainer__Plans__3d"
    deep.parent.mkdir(parents=True)
    (deep).symlink_to(model_dir, target_is_directory=True)
    assert find_model_folders(tmp_path) == [deep]
    assert find_model_folders(tmp_path, depth=2) == []


def test_numeric_flag_types():
    windows, step = key_value("batch_windows"), key_value("step_size")
    assert windows("4") == 4 and windows("0") == 0 and step("1") == 1.0 and step("0.25") == 0.25
    for bad in ("-1", "2.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
            windows(bad)
    for bad in ("0", "-0.5", "1.01", "nan", "inf", "half"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"\(0, 1\]"):
            step(bad)


@pytest.mark.parametrize("reason", ["corrupt checkpoint (truncated)", "untrusted checkpoint (pickled code)"])
def test_input_error_while_the_model_loads_exits_2(tmp_path, model_dir, monkeypatch, caplog, reason):
    """Checkpoint loading names the file and the reason with InputError: one line, exit 2, no output."""
    from flareseg.inference.predictor import FastPredictor

    ckpt = model_dir / "fold_0" / "checkpoint_final.pth"

    def refuse(*a, **k):
        raise InputError(ckpt, reason)
    monkeypatch.setattr(FastPredictor, "__init__", refuse)
    _ct(tmp_path / "a.nii.gz")
    rc = main(["predict", "-i", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "out" / "deep"),
               "-m", str(model_dir), "--device", "cpu", "-q"])
    assert rc == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [f"{ckpt}: {reason}"] and not errors[0].exc_info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]   # no empty output folder left


def test_device_cuda_without_cuda_exits_2(tmp_path, model_dir, caplog):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _ct(tmp_path / "a.nii.gz")
    assert main(["predict", "-i", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "out"), "-m", str(model_dir),
                 "--device", "cuda", "-q"]) == 2
    assert "--device cuda (inference.device): no CUDA device" in caplog.text and not (tmp_path / "out").exists()
