"""The FLARE command line in a real container (podman, CPU): `sh predict.sh` with inputs/ and
outputs/ mounted, outputs/ owned by root, the image's own user setup (docker/Dockerfile.cpu, the
CPU variant of docker/Dockerfile).

Marked `docker`: skipped unless selected (`pytest -m docker`, as root, podman installed; see
docker/README.md and ../shared/CONTAINERS.md). The Debian base image is built once with
debootstrap and cached (FLARESEG_PODMAN_CACHE, default /var/tmp/flareseg-podman); the test
environment's site-packages are mounted read-only into the container, so it runs the pinned versions.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.cli import main
from tiny_model import tiny_plans, write_model_folder
from tests.bad_input import leftovers, md5_tree

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FLARESEG_PODMAN_CACHE", "/var/tmp/flareseg-podman"))
BASE = "localhost/flareseg-debian-python:bookworm"
FLARE_UID = 1000   # the image's user flare
LABELS = {0: "background", 1: "liver", 2: "kidney", 3: "tumor"}


def podman(*args, timeout=600, check=True) -> subprocess.CompletedProcess:
    """podman as ../shared/CONTAINERS.md runs it here: runc, cgroupfs, no default ulimits."""
    env = dict(os.environ, CONTAINERS_CONF=str(CACHE / "containers.conf"))
    r = subprocess.run(["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", *map(str, args)],
                       env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr[-3000:]}")
    return r


def _base_image() -> None:
    """The Debian bookworm minbase image with python3 (3.11), made with debootstrap once and cached."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    if not shutil.which("debootstrap"):
        pytest.skip(f"{BASE} missing and debootstrap not installed (apt-get install debootstrap)")
    rootfs = CACHE / "rootfs"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(rootfs),
                        "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=1200)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    env = dict(os.environ, CONTAINERS_CONF=str(CACHE / "containers.conf"))
    subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, env=env, check=True,
                   capture_output=True, timeout=600)
    assert tar.wait() == 0


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The CPU test image with a tiny exported (stock-loadable) model at /opt/model."""
    if os.geteuid() != 0 or not shutil.which("podman"):
        pytest.skip("needs root and podman (apt-get install podman runc debootstrap; ../shared/CONTAINERS.md)")
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the container's python is Debian bookworm's 3.11; this environment's packages are for "
                    f"{sys.version_info[0]}.{sys.version_info[1]}")
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "containers.conf").write_text("[containers]\ndefault_ulimits = []\n")
    _base_image()

    tmp = tmp_path_factory.mktemp("image")
    ctx = tmp / "ctx"
    shutil.copytree(REPO / "flareseg", ctx / "flareseg", ignore=shutil.ignore_patterns("__pycache__"))
    (ctx / "docker").mkdir()
    for f in ("predict.sh", "Dockerfile.cpu"):
        shutil.copy2(REPO / "docker" / f, ctx / "docker" / f)
    trained = write_model_folder(tmp / "trained", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), labels=LABELS,
                                 seed=3, trainer_name="FlareSegTrainer")   # what stage 6 ships
    assert main(["export-model", "-m", str(trained), "-o", str(ctx / "docker" / "model")]) == 0
    tag = f"localhost/flareseg-cpu:test-{os.getpid()}"
    podman("build", "--network", "none", "-q", "-f", ctx / "docker" / "Dockerfile.cpu", "-t", tag, ctx)
    yield tag
    podman("rmi", "-f", tag, check=False)


def _ct(path: Path, shape=(16, 36, 40), spacing=(1.4, 1.5, 2.5), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000, dtype=np.int16)
    arr[:, 6:30, 6:34] = 40 + rng.integers(-20, 20, size=(shape[0], 24, 28)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-20.0, 12.5, 100.0))
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture
def inputs(tmp_path, shared_data):
    """A real CT (direction diag(-1,-1,1), 3 mm) and a synthetic one, named as FLARE names them."""
    inp = tmp_path / "inputs"
    inp.mkdir()
    shutil.copyfile(shared_data / "ct" / "ts_example_ct_sm.nii.gz", inp / "Case_00001_0000.nii.gz")
    _ct(inp / "Case_00002_0000.nii.gz")
    return inp


def flare_run(image: str, inputs: Path, outputs: Path, report_dir: Path) -> subprocess.CompletedProcess:
    """The challenge's command line; the run report goes to a folder only flare can write, so its
    owner shows which user predicted."""
    site = sysconfig.get_paths()["purelib"]
    return podman("run", "--rm", "--network", "none",
                  "-v", f"{inputs}:/workspace/inputs", "-v", f"{outputs}:/workspace/outputs",
                  "-v", f"{report_dir}:/workspace/report", "-v", f"{site}:/opt/site-packages:ro",
                  "-e", "REPORT=/workspace/report/predict_report.json",
                  image, "/bin/bash", "-c", "sh predict.sh", check=False, timeout=600)


def _report_dir(tmp_path: Path) -> Path:
    d = tmp_path / "report"
    d.mkdir(mode=0o700)
    os.chown(d, FLARE_UID, FLARE_UID)
    return d


def _same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetDirection(), b.GetDirection())


def _published(outputs: Path) -> list[str]:
    """The label maps in ``outputs`` (names); the only hidden entry allowed beside them is the write
    guard's ledger, by which a rerun recognises its own files."""
    assert {p.name for p in outputs.iterdir() if p.name.startswith(".")} <= {".flareseg-written.jsonl"}
    return sorted(p.name for p in outputs.iterdir() if not p.name.startswith("."))


def test_flare_command_line_writes_into_root_owned_outputs(image, inputs, tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir(mode=0o755)                      # what `mkdir outputs` gives root on the host
    assert outputs.stat().st_uid == 0
    report_dir = _report_dir(tmp_path)
    before = md5_tree([inputs])

    r = flare_run(image, inputs, outputs, report_dir)

    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert _published(outputs) == ["Case_00001.nii.gz", "Case_00002.nii.gz"]
    for case in ("Case_00001", "Case_00002"):
        src = sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz"))
        lab = sitk.ReadImage(str(outputs / f"{case}.nii.gz"))
        _same_geometry(lab, src)
        assert set(np.unique(sitk.GetArrayViewFromImage(lab))) <= set(LABELS)
    st = outputs.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)      # the mounted folder is left as it was
    assert md5_tree([inputs]) == before                        # inputs untouched
    assert leftovers([outputs, inputs]) == []
    report = report_dir / "predict_report.json"
    assert report.stat().st_uid == FLARE_UID                   # the prediction ran as flare, not root
    assert '"cases_ok": 2' in report.read_text()


def test_outputs_writable_by_flare_are_written_directly(image, inputs, tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    os.chown(outputs, FLARE_UID, FLARE_UID)
    r = flare_run(image, inputs, outputs, _report_dir(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    names = _published(outputs)
    assert names == ["Case_00001.nii.gz", "Case_00002.nii.gz"]
    assert {(outputs / n).stat().st_uid for n in names} == {FLARE_UID}


def test_failed_case_is_reported_and_the_rest_published(image, inputs, tmp_path):
    (inputs / "Case_00003_0000.nii.gz").write_bytes(b"\x1f\x8b not a nifti")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    before = md5_tree([inputs])
    r = flare_run(image, inputs, outputs, _report_dir(tmp_path))
    assert r.returncode == 1, r.stderr[-3000:]
    assert _published(outputs) == ["Case_00001.nii.gz", "Case_00002.nii.gz"]
    assert [ln for ln in r.stderr.splitlines() if "Case_00003" in ln and "failed" in ln], r.stderr
    assert "Traceback" not in r.stderr
    assert md5_tree([inputs]) == before and leftovers([outputs, inputs]) == []


def test_inputs_flare_cannot_read_are_predicted_as_root(image, inputs, tmp_path):
    inputs.chmod(0o700)                            # root-only inputs: flare could not open them
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    before = md5_tree([inputs])
    r = flare_run(image, inputs, outputs, _report_dir(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "user flare cannot read /workspace/inputs; predicting as root" in r.stderr
    assert _published(outputs) == ["Case_00001.nii.gz", "Case_00002.nii.gz"]
    assert md5_tree([inputs]) == before and leftovers([outputs, inputs]) == []


def test_outputs_mounted_on_the_inputs_are_refused(image, tmp_path):
    data = tmp_path / "data"                      # the same host folder as inputs/ and outputs/
    data.mkdir()
    _ct(data / "Case_00001.nii.gz")                # its label map would have this very name
    before = md5_tree([data])
    r = flare_run(image, data, data, _report_dir(tmp_path))
    assert r.returncode == 2, r.stderr[-3000:]
    assert [ln for ln in r.stderr.splitlines() if "/workspace/outputs" in ln and "input" in ln], r.stderr
    assert "Traceback" not in r.stderr
    assert md5_tree([data]) == before and sorted(p.name for p in data.iterdir()) == ["Case_00001.nii.gz"]


def test_a_foreign_file_in_root_owned_outputs_is_never_replaced(image, inputs, tmp_path):
    """Staged publishing goes through the write guard: a file of a case's name that predict did not
    write stops the run before the prediction (exit 2, one line); a rerun replaces its own files."""
    outputs = tmp_path / "outputs"
    outputs.mkdir(mode=0o755)
    user = outputs / "Case_00002.nii.gz"
    user.write_bytes(b"the user's own file\n")
    r = flare_run(image, inputs, outputs, _report_dir(tmp_path))
    assert r.returncode == 2, r.stderr[-3000:]
    assert [ln for ln in r.stderr.splitlines() if "Case_00002.nii.gz" in ln and "--overwrite" in ln], r.stderr
    assert user.read_bytes() == b"the user's own file\n" and _published(outputs) == ["Case_00002.nii.gz"]
    user.unlink()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert flare_run(image, inputs, outputs, _report_dir(tmp_path / "a")).returncode == 0
    assert flare_run(image, inputs, outputs, _report_dir(tmp_path / "b")).returncode == 0   # its own files
    assert _published(outputs) == ["Case_00001.nii.gz", "Case_00002.nii.gz"]
