"""The write guard (flareseg/write_guard.py, issue 24): the reproduced data-loss cases of predict,
import, clean, export-model and two concurrent predicts, the refusals docs/reliability.md lists,
verified writes and the no-temp rule.  Each row checks exit code, one line naming the files, and
that every pre-existing byte is unchanged."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bad_input import leftovers, md5_tree, run_command, tiny_ct
from tiny_model import tiny_plans, write_model_folder
from flareseg import io as fio
from flareseg import write_guard
from flareseg.cli import main
from flareseg.write_guard import LEDGER, UnsafeOutput
from tiny import write_tiny_raw

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)


def _label(path: Path, value: int = 1) -> Path:
    arr = np.zeros((16, 40, 36), np.uint8)
    arr[4:10, 10:20, 10:20] = value
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 2.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _refused(res, *names: str) -> None:
    """Exit 2, no traceback, one line naming every one of ``names``."""
    assert res.rc == 2, res.lines
    assert "Traceback" not in res.stderr + res.stdout
    assert [ln for ln in res.lines if all(n in ln for n in names)], (names, res.lines)


# ------------------------------------------------------------------ predict

def _gt(tmp_path: Path) -> Path:
    gt = tmp_path / "gt"
    (gt / "imagesTr").mkdir(parents=True)
    tiny_ct(gt / "imagesTr" / "ct_0000.nii.gz")
    _label(gt / "labelsTr" / "ct.nii.gz")
    return gt


def test_predict_into_ground_truth_folder_does_not_replace_it(tmp_path, model, capsys, caplog):
    """`predict -i gt/imagesTr -o gt/labelsTr` replaced the ground truth labelsTr/ct.nii.gz (exit 0)."""
    gt = _gt(tmp_path)
    before, images = md5_tree([gt]), md5_tree([gt / "imagesTr"])
    argv = ["predict", "-i", str(gt / "imagesTr"), "-o", str(gt / "labelsTr"), "-m", str(model), "--device", "cpu", "-q"]
    _refused(run_command(main, argv, capsys, caplog), str(gt / "labelsTr" / "ct.nii.gz"), "--overwrite")
    assert md5_tree([gt]) == before and leftovers([gt]) == []
    assert not (gt / "labelsTr" / LEDGER).exists()          # nothing created
    res = run_command(main, argv + ["--overwrite"], capsys, caplog)
    assert res.rc == 0 and md5_tree([gt / "imagesTr"]) == images
    assert write_guard.owns(gt / "labelsTr" / "ct.nii.gz", "predict")


def test_api_predict_does_not_replace_ground_truth(tmp_path, model):
    import flareseg
    gt = _gt(tmp_path)
    before = md5_tree([gt])
    with pytest.raises(UnsafeOutput, match="labelsTr/ct.nii.gz exists and was not written by flareseg predict"):
        flareseg.predict(gt / "imagesTr", model, gt / "labelsTr", device="cpu")
    assert md5_tree([gt]) == before
    assert flareseg.predict(gt / "imagesTr", model, gt / "labelsTr", device="cpu", overwrite=True)


def test_predict_rerun_replaces_its_own_outputs_but_not_a_changed_one(tmp_path, model, capsys, caplog):
    inp = tmp_path / "in"
    inp.mkdir()
    tiny_ct(inp / "a.nii.gz")
    out = inp / "out"                                         # a subfolder of the input folder: fine
    argv = ["predict", "-i", str(inp), "-o", str(out), "-m", str(model), "--device", "cpu", "-q"]
    assert run_command(main, argv, capsys, caplog).rc == 0
    assert run_command(main, argv, capsys, caplog).rc == 0    # its own outputs: replaced
    _label(out / "a.nii.gz", 3)                               # the user edits the label map: foreign again
    before = md5_tree([out / "a.nii.gz"])
    _refused(run_command(main, argv, capsys, caplog), str(out / "a.nii.gz"), "changed since")
    assert md5_tree([out / "a.nii.gz"]) == before


def test_two_predicts_into_one_folder_at_once_both_in_the_report(tmp_path, model):
    """Two concurrent runs: the labels were fine, but the report listed only one run's cases."""
    out = tmp_path / "out"
    procs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tiny_ct(tmp_path / name / f"{name}.nii.gz")
        procs.append(subprocess.Popen([sys.executable, "-m", "flareseg.cli", "predict", "-i", str(tmp_path / name),
                                       "-o", str(out), "-m", str(model), "--device", "cpu", "-q"], cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    rep = fio.read_json(out / "predict_report.json")
    assert sorted(e["case"] for e in rep["cases"]) == ["a", "b"] and rep["cases_ok"] == 2
    assert leftovers([out]) == []


# ------------------------------------------------------------------ import

def _import(raw: Path, out: Path, manifest: bool = True) -> list[str]:
    argv = ["import", "--images", str(raw / "imagesTr"), "--labels", str(raw / "labelsTr"), "--out", str(out)]
    return argv + (["--manifest", str(raw / "manifest.csv")] if manifest else [])


def test_import_into_a_users_dataset_is_refused(tmp_path, capsys, caplog):
    """`import --out EXISTING_DATASET` deleted the user's imagesTr/mycase_0000.nii.gz and
    labelsTr/mycase.nii.gz and overwrote their dataset.json."""
    raw = write_tiny_raw(tmp_path / "raw", n_unlabeled=0)
    ds = tmp_path / "Dataset001_Mine"
    (ds / "imagesTr").mkdir(parents=True)
    tiny_ct(ds / "imagesTr" / "mycase_0000.nii.gz")
    _label(ds / "labelsTr" / "mycase.nii.gz")
    (ds / "dataset.json").write_text('{"mine": true}\n')
    before = md5_tree([ds])
    _refused(run_command(main, _import(raw, ds), capsys, caplog), str(ds), "not an earlier import")
    assert md5_tree([ds]) == before and leftovers([ds]) == []


def test_import_removes_only_what_an_earlier_import_wrote(tmp_path, capsys, caplog):
    raw = write_tiny_raw(tmp_path / "raw", n_unlabeled=0)
    ds = tmp_path / "ds"
    assert run_command(main, _import(raw, ds), capsys, caplog).rc == 0
    tiny_ct(ds / "imagesTr" / "mycase_0000.nii.gz")           # the user's file in an import's folder
    dropped = sorted((raw / "imagesTr").iterdir())[0]
    gone = ds / "imagesTr" / dropped.name
    dropped.unlink()                                           # a case no longer given: import's file goes
    mine = md5_tree([ds / "imagesTr" / "mycase_0000.nii.gz"])
    assert run_command(main, _import(raw, ds), capsys, caplog).rc == 1   # the case's label has no image
    assert not gone.exists() and md5_tree([ds / "imagesTr" / "mycase_0000.nii.gz"]) == mine


def test_import_rerun_over_hard_links_leaves_no_temp(tmp_path, capsys, caplog):
    """Re-running import (adding a manifest) left hidden .<case>_0000.nii.gz.<host>-<pid>.*.tmp.nii.gz
    files in imagesTr: the rename of a hard link onto a link of the same file does nothing."""
    raw = write_tiny_raw(tmp_path / "raw", n_unlabeled=0)
    ds = tmp_path / "ds"
    assert run_command(main, _import(raw, ds, manifest=False), capsys, caplog).rc == 0
    first = next((ds / "imagesTr").iterdir())
    assert os.path.samefile(first, raw / "imagesTr" / first.name)       # imported as a hard link
    assert run_command(main, _import(raw, ds), capsys, caplog).rc == 0  # redone: annotated types changed
    assert leftovers([ds]) == [] and not [p for p in (ds / "imagesTr").iterdir() if p.name.startswith(".")]


def test_hard_link_onto_the_same_file_leaves_no_temp(tmp_path):
    src = tiny_ct(tmp_path / "a.nii.gz")
    fio.link_or_copy(src, tmp_path / "b.nii.gz")
    fio.link_or_copy(src, tmp_path / "b.nii.gz")                          # os.replace is a no-op here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]


# ------------------------------------------------------------------ clean and evaluate

def test_clean_images_in_out_labels_is_refused(tmp_path, capsys, caplog):
    """`clean --labels L --images O/labels --out O` overwrote the CT O/labels/ct.nii.gz."""
    labels, out = tmp_path / "L", tmp_path / "O"
    _label(labels / "ct.nii.gz")
    (out / "labels").mkdir(parents=True)
    tiny_ct(out / "labels" / "ct.nii.gz")
    before = md5_tree([labels, out])
    argv = ["clean", "--labels", str(labels), "--images", str(out / "labels"), "--out", str(out)]
    _refused(run_command(main, argv, capsys, caplog), str(out / "labels" / "ct.nii.gz"))
    assert md5_tree([labels, out]) == before and leftovers([out]) == []


@pytest.mark.parametrize("cmd", ["clean", "evaluate"])
def test_out_inside_an_input_folder_is_refused(tmp_path, cmd, capsys, caplog):
    """docs/reliability.md said so; both were accepted."""
    labels = tmp_path / "L"
    _label(labels / "c.nii.gz")
    out = labels / "sub"
    argv = (["clean", "--labels", str(labels)] if cmd == "clean" else
            ["evaluate", "--pred", str(labels), "--gt", str(labels)]) + ["--out", str(out)]
    before = md5_tree([labels])
    _refused(run_command(main, argv, capsys, caplog), str(out), str(labels), "inside")
    assert md5_tree([labels]) == before and not out.exists()


def test_evaluate_does_not_replace_a_foreign_summary(tmp_path, capsys, caplog):
    labels, out = tmp_path / "L", tmp_path / "out"
    _label(labels / "c.nii.gz")
    out.mkdir()
    (out / "summary.json").write_text("mine\n")
    argv = ["evaluate", "--pred", str(labels), "--gt", str(labels), "--out", str(out)]
    _refused(run_command(main, argv, capsys, caplog), str(out / "summary.json"), "--overwrite")
    assert (out / "summary.json").read_text() == "mine\n"
    assert run_command(main, argv + ["--overwrite"], capsys, caplog).rc == 0
    assert run_command(main, argv, capsys, caplog).rc == 0      # now its own: a rerun replaces it


# ------------------------------------------------------------------ export-model

def test_export_into_an_earlier_export_holding_the_model_keeps_the_model(tmp_path, model, capsys, caplog):
    """`export-model -m X -o Y` deleted X when X lay inside an earlier export Y."""
    y = tmp_path / "Y"
    assert run_command(main, ["export-model", "-m", str(model), "-o", str(y)], capsys, caplog).rc == 0
    x = y / "models" / "X"
    shutil.copytree(model, x)
    before = md5_tree([x])
    assert run_command(main, ["export-model", "-m", str(x), "-o", str(y)], capsys, caplog).rc == 0
    assert md5_tree([x]) == before and (y / "flareseg_export.json").is_file() and leftovers([y]) == []


# ------------------------------------------------------------------ verified writes, full disk

def test_a_truncated_write_never_gets_the_real_name(tmp_path, monkeypatch):
    """SimpleITK does not raise on "no space left": a 0-byte or truncated file was renamed into place."""
    dest = tmp_path / "lab.nii.gz"
    fio.write_text("old", tmp_path / "keep.txt")
    real = sitk.WriteImage
    for cut in (0, 40):
        def short_write(img, path, useCompression=True, cut=cut):
            real(img, path, useCompression=useCompression)
            with open(path, "r+b") as f:
                f.truncate(cut)
        monkeypatch.setattr(sitk, "WriteImage", short_write)
        with pytest.raises(fio.WriteFailed, match=f"{dest}: write failed"):
            fio.write_image(sitk.Image([4, 4, 4], sitk.sitkUInt8), dest)
        assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def _run_with_file_size_limit(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """``flareseg ARGV`` in a process whose files may not grow past ``limit`` bytes (EFBIG, as a full
    disk gives ENOSPC; SimpleITK writes short files without an error)."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from flareseg.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def _no_broken_outputs(folder: Path) -> None:
    """No temp left; every image under a real name reads back."""
    assert leftovers([folder]) == []
    for p in folder.rglob("*.nii.gz"):
        fio.read_image(p)


@pytest.mark.parametrize("cmd", ["evaluate", "clean", "import", "export-model"])
def test_write_failure_mid_run_is_one_line_and_leaves_no_partial_file(tmp_path, model, cmd):
    raw = write_tiny_raw(tmp_path / "raw", n_unlabeled=0)
    out = tmp_path / "out"
    argv = {"evaluate": ["evaluate", "--pred", str(raw / "labelsTr"), "--gt", str(raw / "labelsTr"), "--out", str(out)],
            "clean": ["clean", "--labels", str(raw / "labelsTr"), "--out", str(out)],
            "import": ["import", "--unlabeled", str(raw / "imagesTr"), "--out", str(out)],
            "export-model": ["export-model", "-m", str(model), "-o", str(out)]}[cmd]
    before = md5_tree([raw, model])
    r = _run_with_file_size_limit(argv, 300)
    assert r.returncode == 4, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "ERROR" in ln or ln.startswith("flareseg:")]
    assert "Traceback" not in r.stderr and len([ln for ln in lines if str(out) in ln]) >= 1, r.stderr
    assert md5_tree([raw, model]) == before
    _no_broken_outputs(out)


@pytest.mark.parametrize("cmd", ["evaluate", "clean", "import", "export-model"])
def test_read_only_output_folder_is_refused_before_work(tmp_path, model, cmd):
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"] if os.geteuid() == 0 else []
    raw = write_tiny_raw(tmp_path / "raw", n_unlabeled=0)
    out = tmp_path / "out"
    out.mkdir()
    argv = {"evaluate": ["evaluate", "--pred", str(raw / "labelsTr"), "--gt", str(raw / "labelsTr"), "--out", str(out)],
            "clean": ["clean", "--labels", str(raw / "labelsTr"), "--out", str(out)],
            "import": ["import", "--unlabeled", str(raw / "imagesTr"), "--out", str(out)],
            "export-model": ["export-model", "-m", str(model), "-o", str(out)]}[cmd]
    os.chmod(out, 0o555)
    try:
        r = subprocess.run([*prefix, sys.executable, "-m", "flareseg.cli", *argv], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    finally:
        os.chmod(out, 0o755)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and f"{out}: cannot create or write into the output folder" in r.stderr
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------ folders written before ledgers

def test_folders_written_before_ledgers_are_recognised(tmp_path, model, capsys, caplog):
    """A rerun over an import/clean/export/phantoms folder of an earlier flareseg (no ledger) is
    not refused: each command recognises its own records and adopts those files once."""
    raw = write_tiny_raw(tmp_path / "raw", n_unlabeled=0)
    runs = [_import(raw, tmp_path / "ds"),
            ["clean", "--labels", str(raw / "labelsTr"), "--out", str(tmp_path / "cl")],
            ["export-model", "-m", str(model), "-o", str(tmp_path / "ex")],
            ["evaluate", "--pred", str(raw / "labelsTr"), "--gt", str(raw / "labelsTr"), "--out", str(tmp_path / "ev")],
            ["predict", "-i", str(raw / "imagesTr"), "-o", str(tmp_path / "pr"), "-m", str(model), "--device", "cpu",
             "-q", "--preview"],
            ["phantoms", "--out", str(tmp_path / "ph"), "--labeled", "1", "--tumor-only", "0",
             "--unlabeled", "0", "--validation", "0"]]
    for argv in runs:
        assert run_command(main, argv, capsys, caplog).rc == 0, argv
        out = Path(argv[argv.index("--out" if "--out" in argv else "-o") + 1])
        (out / LEDGER).unlink()                           # as an earlier version left it
        res = run_command(main, argv, capsys, caplog)
        assert res.rc == 0, (argv, res.lines)
        assert (out / LEDGER).is_file() and leftovers([out]) == []


def test_phantoms_refuses_a_foreign_file_and_removes_only_its_own(tmp_path, capsys, caplog):
    out = tmp_path / "ph"
    (out / "imagesTr").mkdir(parents=True)
    tiny_ct(out / "imagesTr" / "PH_0000_0000.nii.gz")     # the user's file with a phantom's name
    before = md5_tree([out])
    argv = ["phantoms", "--out", str(out), "--labeled", "1", "--tumor-only", "0", "--unlabeled", "0",
            "--validation", "0"]
    res = run_command(main, argv, capsys, caplog)
    assert res.rc == 2 and md5_tree([out]) == before
    assert [ln for ln in res.lines if "PH_0000_0000.nii.gz" in ln and "--overwrite" in ln], res.lines
    shutil.rmtree(out)
    assert run_command(main, argv, capsys, caplog).rc == 0
    tiny_ct(out / "imagesTr" / "PH_0042_0000.nii.gz")     # a PH_* file phantoms did not write: kept
    assert run_command(main, argv, capsys, caplog).rc == 0
    assert (out / "imagesTr" / "PH_0042_0000.nii.gz").is_file()


def test_a_header_s_data_file_counts_as_input(tmp_path, model, capsys, caplog):
    """`-i a.mhd`: its ElementDataFile is read too, so an output onto it is refused."""
    from flareseg.write_guard import input_files
    img = sitk.ReadImage(str(tiny_ct(tmp_path / "ct.nii.gz")))
    (tmp_path / "in").mkdir()
    sitk.WriteImage(img, str(tmp_path / "in" / "a.mhd"))
    assert {p.name for p in input_files([tmp_path / "in"])} == {"a.mhd", "a.raw"}
    before = md5_tree([tmp_path / "in"])
    argv = ["predict", "-i", str(tmp_path / "in" / "a.mhd"), "-o", str(tmp_path / "in" / "a.raw"), "-m", str(model),
            "--device", "cpu", "-q"]
    res = run_command(main, argv, capsys, caplog)
    assert res.rc == 2 and md5_tree([tmp_path / "in"]) == before, res.lines


# ------------------------------------------------------------------ the ledger itself

def test_ledger_records_by_command_survives_a_cut_line_and_compacts(tmp_path):
    with write_guard.recording(tmp_path, "clean"):
        for n in ("a.txt", "b.txt", "c.txt"):
            fio.write_text(n, tmp_path / n)
    assert write_guard.owns(tmp_path / "a.txt", "clean") and not write_guard.owns(tmp_path / "a.txt", "predict")
    with open(tmp_path / LEDGER, "ab") as f:
        f.write(b'{"path": "d.txt", "comm')                       # a writer killed mid-line
    (tmp_path / "b.txt").write_text("edited by the user")           # changed since: foreign again
    assert write_guard.remove_owned(tmp_path / "c.txt", "clean") and not (tmp_path / "c.txt").exists()
    assert not write_guard.remove_owned(tmp_path / "b.txt", "clean") and (tmp_path / "b.txt").exists()
    write_guard.compact(tmp_path)
    lines = (tmp_path / LEDGER).read_text().splitlines()
    assert [fio.json.loads(ln)["path"] for ln in lines] == ["a.txt"] and write_guard.owns(tmp_path / "a.txt")
    with pytest.raises(UnsafeOutput, match="b.txt exists and was not written by flareseg clean"):
        with write_guard.recording(tmp_path, "clean"):
            fio.write_text("x", tmp_path / "b.txt")                 # the write-time net
    assert (tmp_path / "b.txt").read_text() == "edited by the user" and leftovers([tmp_path]) == []
