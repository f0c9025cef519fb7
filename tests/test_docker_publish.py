"""docker/predict.sh's staging path (issue 24): started as root with an output folder the
unprivileged user cannot write (the FLARE case), the prediction runs as that user into a staging
folder and root publishes the finished files through the write guard -- checked before any work, a
file predict did not write is never replaced (exit 2, one line) unless --overwrite, the published
files are recorded in the output folder's ledger as predict's, so a rerun (staged or direct)
replaces them.  Run on the host as root with RUN_AS=nobody (skipped elsewhere)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bad_input import leftovers, tiny_ct
from tiny_model import tiny_plans, write_model_folder
from flareseg import write_guard

REPO = Path(__file__).resolve().parents[1]
USER = "nobody"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or
                                subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0,
                                reason=f"needs root, setpriv and a user {USER}")


@pytest.fixture
def base():
    """A folder the unprivileged user can traverse (pytest's tmp_path is root's, mode 0700): model
    and inputs readable by it, outputs/ root's 0755 (not writable by it), a report folder it may
    write."""
    d = Path(tempfile.mkdtemp(prefix="flareseg-publish-", dir="/tmp"))
    d.chmod(0o755)
    write_model_folder(d / "model", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)
    (d / "inputs").mkdir()
    tiny_ct(d / "inputs" / "Case_00001_0000.nii.gz")
    (d / "outputs").mkdir(mode=0o755)
    (d / "report").mkdir()
    (d / "report").chmod(0o777)
    for p in d.rglob("*"):
        p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def predict_sh(base: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, INPUT_DIR=str(base / "inputs"), OUTPUT_DIR=str(base / "outputs"),
               MODEL_DIR=str(base / "model"), RUN_AS=USER, DEVICE="cpu", REPORT=str(base / "report" / "r.json"),
               FLARESEG=f"{sys.executable} -m flareseg.cli", PYTHONPATH=str(REPO), MPLCONFIGDIR=str(base / "report"))
    return subprocess.run(["sh", str(REPO / "docker" / "predict.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_staged_run_never_replaces_a_foreign_file(base):
    """Before: root published with `mv -f` and replaced the user's file after the prediction."""
    user = base / "outputs" / "Case_00001.nii.gz"
    user.write_bytes(b"the user's own file\n")
    r = predict_sh(base)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(user) in lines[0] and "--overwrite" in lines[0], r.stderr
    assert user.read_bytes() == b"the user's own file\n"
    assert sorted(p.name for p in (base / "outputs").iterdir()) == ["Case_00001.nii.gz"]
    assert not (base / "report" / "r.json").exists(), "predicted although the publish was refused"
    r = predict_sh(base, "--overwrite")          # the user says so: replaced, and recorded as predict's
    assert r.returncode == 0, r.stderr[-2000:]
    assert user.read_bytes() != b"the user's own file\n" and write_guard.owns(user, "predict")


def test_staged_outputs_are_predicts_own_on_a_rerun(base):
    r = predict_sh(base)
    assert r.returncode == 0, r.stderr[-2000:]
    label = base / "outputs" / "Case_00001.nii.gz"
    assert "Case_00001.nii.gz" in [p.name for p in (base / "outputs").iterdir()]
    assert label.stat().st_uid == 0 and label.stat().st_mode & 0o777 == 0o644
    assert (base / "report" / "r.json").stat().st_uid != 0, "the prediction itself ran as root"
    assert write_guard.owns(label, "predict")
    assert predict_sh(base).returncode == 0                      # staged rerun replaces its own file
    direct = subprocess.run([sys.executable, "-m", "flareseg.cli", "predict", "-i", str(base / "inputs"),
                             "-o", str(base / "outputs"), "-m", str(base / "model"), "--device", "cpu", "-q",
                             "--report", str(base / "report" / "d.json")],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert direct.returncode == 0, direct.stderr[-2000:]        # and so does a direct predict
    assert leftovers([base]) == []
