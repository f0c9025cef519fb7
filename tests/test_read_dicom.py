"""DICOM folders through the one read path (issue 24): several series, one 2-D slice, a FIFO or an
unreadable file or sub-folder: refused with one line naming them, never read silently."""
from __future__ import annotations

import locale
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bad_input import check_contract, md5_tree, run_command
from flareseg.cli import main
from flareseg.dicom import SERIES_ENV, is_dicom_dir, list_series
from flareseg.io import Geometry, InputError, read_image, write_array
from tiny_model import tiny_plans, write_model_folder

REPO = Path(__file__).resolve().parents[1]
GEO = Geometry((12, 10, 8), (1.5, 1.5, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def write_series(folder: Path, uid: str, description: str, n: int, prefix: str = "s") -> Path:
    """``n`` 16 x 16 CT slices (0.8 mm pixels, 2 mm apart) of series ``uid`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = locale.setlocale(locale.LC_ALL)   # GDCM's writer leaves LC_CTYPE at "C" (ASCII): later
    try:                                     # tests' text decoding in this process would then fail
        _write_slices(folder, uid, description, n, prefix)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder


def _write_slices(folder: Path, uid: str, description: str, n: int, prefix: str) -> None:
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    for z in range(n):
        sl = sitk.GetImageFromArray(np.full((16, 16), -1000 + 50 * z, np.int16))
        sl.SetSpacing((0.8, 0.8))
        for k, v in [("0008|0060", "CT"), ("0020|000e", uid), ("0008|103e", description),
                     ("0020|0013", str(z + 1)), ("0020|0032", f"0\\0\\{2.0 * z}"),
                     ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "0.8\\0.8"), ("0018|0050", "2.0"),
                     ("0008|0018", f"{uid}.{z + 1}"), ("0020|000d", "1.2.826.0.1.9")]:
            sl.SetMetaData(k, v)
        w.SetFileName(str(folder / f"{prefix}{z:03d}.dcm"))
        w.Execute(sl)


ART, VEN = "1.2.826.0.1.1", "1.2.826.0.1.2"


def _two_series(folder: Path) -> Path:
    write_series(folder, ART, "arterial", 5, "a")
    return write_series(folder, VEN, "venous", 7, "v")


def _ct(path: Path) -> Path:
    arr = np.full(GEO.shape_zyx, -1000, np.int16)
    arr[:, 2:8, 2:10] = 60
    return write_array(arr, GEO, path)


def test_two_series_in_one_folder_are_named_and_one_can_be_picked(tmp_path, monkeypatch):
    d = _two_series(tmp_path / "study")
    assert [(s.uid, len(s.files), s.description) for s in list_series(d)] == [(VEN, 7, "venous"), (ART, 5, "arterial")]
    with pytest.raises(InputError) as e:
        read_image(d)
    msg = str(e.value)
    assert msg.startswith(f"{d}: 2 DICOM series in one folder: ") and "\n" not in msg
    assert f"{VEN} (7 slices, 'venous')" in msg and f"{ART} (5 slices, 'arterial')" in msg and "--series" in msg
    assert read_image(d, series=ART).GetSize() == (16, 16, 5)
    assert read_image(d, series=[VEN, "9.9"]).GetSize() == (16, 16, 7)
    with pytest.raises(InputError, match="more than one"):
        read_image(d, series=[VEN, ART])
    monkeypatch.setenv(SERIES_ENV, ART)                     # what --series sets for a command
    assert read_image(d).GetSize() == (16, 16, 5)


def test_real_series_with_a_second_series_beside_it(tmp_path, shared_data):
    d = tmp_path / "patient"
    shutil.copytree(shared_data / "ct" / "ts_example_ct_dicom", d)
    write_series(d, VEN, "venous", 3, "v")
    with pytest.raises(InputError, match=r"2 DICOM series in one folder: <no UID> \(20 slices, 'CT Body 3.0'\); "
                                         rf"{VEN} \(3 slices, 'venous'\)"):
        read_image(d)
    assert read_image(d, series="").GetSize() == (512, 512, 20)


@pytest.mark.parametrize("pick", [False, True])
def test_import_refuses_several_series_unless_series_picks_one(pick, tmp_path, capsys, caplog):
    src, out = tmp_path / "src", tmp_path / "dataset"
    _ct(src / "good_0000.nii.gz")
    study = _two_series(src / "study")
    before = md5_tree([src])
    res = run_command(main, ["import", "--unlabeled", src, "--out", out, *(["--series", ART] if pick else [])],
                      capsys, caplog)
    assert SERIES_ENV not in os.environ                      # restored after the command
    if pick:
        assert res.rc == 0, res.lines
        assert sitk.ReadImage(str(out / "imagesUnlabeled" / "study_0000.nii.gz")).GetSize() == (16, 16, 5)
        return
    check_contract(res, rc=1, names=[str(study), VEN, ART], reason="2 DICOM series in one folder",
                   inputs_before=before, inputs=[src], outputs=[out],
                   done=[out / "imagesUnlabeled" / "good_0000.nii.gz"])


def test_a_single_2d_slice_is_refused(tmp_path, shared_data, capsys, caplog):
    one = write_series(tmp_path / "one", VEN, "scout", 1)
    with pytest.raises(InputError, match=r"a single 2-D DICOM slice \(16 x 16\), not a 3-D volume"):
        read_image(one)
    real = tmp_path / "src" / "slice"
    real.mkdir(parents=True)
    shutil.copy(sorted((shared_data / "ct" / "ts_example_ct_dicom").iterdir())[0], real)
    _ct(tmp_path / "src" / "good_0000.nii.gz")
    out = tmp_path / "dataset"
    res = run_command(main, ["import", "--unlabeled", tmp_path / "src", "--out", out], capsys, caplog)
    check_contract(res, rc=1, names=[str(real)], reason="a single 2-D DICOM slice (512 x 512)", inputs_before={},
                   inputs=[], outputs=[out], done=[out / "imagesUnlabeled" / "good_0000.nii.gz"])


def test_fifo_in_a_dicom_folder_is_refused_not_dropped(tmp_path, shared_data):
    """GDCM drops a FIFO's neighbours silently (17 of 20 slices were read)."""
    d = tmp_path / "patient"
    shutil.copytree(shared_data / "ct" / "ts_example_ct_dicom", d)
    os.mkfifo(d / "zz.dcm")
    assert is_dicom_dir(d)
    with pytest.raises(InputError, match=r"zz.dcm is a FIFO \(named pipe\), not a regular file: a DICOM folder"):
        read_image(d)


def _run_without_dac(argv: list[str]) -> subprocess.CompletedProcess:
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
        prefix = NO_DAC
    return subprocess.run([*prefix, sys.executable, "-m", "flareseg.cli", *argv], capture_output=True,
                          encoding="utf-8", errors="replace", cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)


@pytest.mark.parametrize("command", ["import", "predict"])
@pytest.mark.parametrize("what", ["subfolder", "file"])
def test_unreadable_dicom_subfolder_or_file_is_reported(what, command, tmp_path, shared_data, model):
    """An unreadable series folder was skipped without a word (an unreadable file, dropped by GDCM)."""
    src, out = tmp_path / "src", tmp_path / "out"
    _ct(src / "good_0000.nii.gz")
    series = src / "patient2"
    shutil.copytree(shared_data / "ct" / "ts_example_ct_dicom", series)
    target = series if what == "subfolder" else sorted(series.iterdir())[-1]
    argv = ["import", "--unlabeled", str(src), "--out", str(out)] if command == "import" else \
        ["predict", "-i", str(src), "-o", str(out), "-m", str(model), "--device", "cpu", "-q"]
    os.chmod(target, 0)
    try:
        r = _run_without_dac(argv)
    finally:
        os.chmod(target, 0o755 if what == "subfolder" else 0o644)
    assert r.returncode == 1, r.stderr
    line = [ln for ln in r.stderr.splitlines() if str(series) in ln]
    assert line and "Permission denied" in line[0], r.stderr
    if what == "file":
        assert target.name in line[0]
    done = out / "imagesUnlabeled" / "good_0000.nii.gz" if command == "import" else out / "good.nii.gz"
    assert "Traceback" not in r.stderr and done.exists()


@pytest.mark.parametrize("pick", [False, True])
def test_predict_refuses_several_series_unless_series_picks_one(pick, tmp_path, model, capsys, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    _ct(inp / "good_0000.nii.gz")
    study = _two_series(inp / "study")
    before = md5_tree([inp, model])
    res = run_command(main, ["predict", "-i", inp, "-o", out, "-m", model, "--device", "cpu", "-q",
                             *(["--series", VEN] if pick else [])], capsys, caplog)
    if pick:
        assert res.rc == 0, res.lines
        assert sitk.ReadImage(str(out / "study.nii.gz")).GetSize() == (16, 16, 7)
        return
    check_contract(res, rc=1, names=[str(study), VEN, ART], reason="pick one with --series", inputs_before=before,
                   inputs=[inp, model], outputs=[out], done=[out / "good.nii.gz"])


def test_api_predictor_takes_series(tmp_path, model):
    from flareseg.inference.predictor import FastPredictor
    d = _two_series(tmp_path / "study")
    pred = FastPredictor(model, device="cpu")
    with pytest.raises(InputError, match="2 DICOM series in one folder"):
        pred.predict(d)
    assert pred.predict(d, series=ART).GetSize() == (16, 16, 5)
