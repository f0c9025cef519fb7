"""docker/predict.sh's publish step (flareseg.inference.publish) stopped by ``docker stop``
(SIGTERM) or Ctrl-C while it copies: exit 143 / 130 with one line, the file being copied leaves no
temp or partial file, the files published before it stay complete and recorded.  The signal is
real (sent to this process from inside the copy), through the same handler every flareseg command
uses (flareseg.boundary.sigterm_unwinds)."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from flareseg import write_guard
from flareseg.inference import publish


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
def test_publish_stopped_mid_copy_leaves_finished_files_and_no_partial_one(layout, monkeypatch, capsys,
                                                                           sig, code, word):
    real_copy, copied = shutil.copyfile, []

    def copy_then_signal(src, dst, **kw):
        copied.append(Path(src).name)
        if len(copied) == 2:                 # the second file: stopped while its temp exists
            Path(dst).write_bytes(b"half")
            os.kill(os.getpid(), sig)
            for _ in range(10 ** 6):         # the handler runs between bytecodes
                pass
            raise AssertionError("the signal did not stop the copy")
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(shutil, "copyfile", copy_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    rc = publish.main(["publish", str(layout / "staged"), str(layout / "outputs"),
                       str(layout / "inputs"), str(layout / "model")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == code and len(err) == 1 and word in err[0], (rc, err)
    assert signal.getsignal(signal.SIGTERM) is before          # the handler is restored
    out = layout / "outputs"
    first = out / "Case_00001.nii.gz"
    assert first.read_bytes() == b"Case_00001" * 1000 and write_guard.owns(first, "predict")
    assert not (out / "Case_00002.nii.gz").exists()
    assert sorted(p.name for p in out.iterdir() if ".tmp" in p.name) == []
