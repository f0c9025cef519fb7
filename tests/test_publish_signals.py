"""docker/predict.sh's publish step (``python -m flareseg.inference.publish``) stopped by ``docker
stop`` (SIGTERM) or Ctrl-C while it copies: exit 143 / 130 with one line, the file being copied
leaves no temp or partial file, the files published before it stay complete and recorded.

The signal is real and goes to a child process running the command, never to the test process:
the child's ``shutil.copyfile`` writes half of the second file and then signals its own process, so
the stop lands while that file's temp exists, at the same point on every machine."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flareseg import write_guard

ROOT = Path(__file__).resolve().parents[1]

# the child: publish.main with a copy that stops itself while writing the second file; it also
# checks that publish gives the SIGTERM handler back
CHILD = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from flareseg.inference import publish
    sig, real_copy, copied = int(sys.argv[1]), shutil.copyfile, []
    def copy_then_signal(src, dst, **kw):
        copied.append(Path(src).name)
        if len(copied) == 2:
            Path(dst).write_bytes(b"half")
            os.kill(os.getpid(), sig)
            for _ in range(10 ** 7):         # the handler runs between bytecodes
                pass
            sys.exit("the signal did not stop the copy")
        return real_copy(src, dst, **kw)
    shutil.copyfile = copy_then_signal
    before = signal.getsignal(signal.SIGTERM)
    rc = publish.main(sys.argv[2:])
    if signal.getsignal(signal.SIGTERM) is not before:
        sys.exit("the SIGTERM handler was not restored")
    sys.exit(rc)
""")


@pytest.fixture
def layout(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "Case_00001_0000.nii.gz").write_bytes(b"ct one")
    (tmp_path / "inputs" / "Case_00002_0000.nii.gz").write_bytes(b"ct two")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "plans.json").write_text("{}")
    (tmp_path / "staged").mkdir()
    for case in ("Case_00001", "Case_00002"):
        (tmp_path / "staged" / f"{case}.nii.gz").write_bytes(case.encode() * 1000)
    (tmp_path / "outputs").mkdir()
    return tmp_path


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_publish_stopped_mid_copy_leaves_finished_files_and_no_partial_one(layout, sig, code, word):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", CHILD, str(int(sig)), "publish", str(layout / "staged"),
                          str(layout / "outputs"), str(layout / "inputs"), str(layout / "model")],
                         capture_output=True, text=True, env=env, timeout=300)
    err = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == code and len(err) == 1 and word in err[0], (run.returncode, err)
    out = layout / "outputs"
    first = out / "Case_00001.nii.gz"
    assert first.read_bytes() == b"Case_00001" * 1000 and write_guard.owns(first, "predict")
    assert not (out / "Case_00002.nii.gz").exists()
    assert sorted(p.name for p in out.iterdir() if ".tmp" in p.name) == []
