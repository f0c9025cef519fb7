"""CPU inference keeps freed memory in the process (glibc ``mallopt``), so that each paper-size
window reuses the previous window's pages instead of page-faulting fresh ones; ``flareseg predict``
does it on a CPU, says so in its run report, and ``FLARESEG_KEEP_FREED_MEMORY=0`` turns it off."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flareseg.inference.cpu_memory import glibc, keep_freed_memory
from bench.model_folder import write_model_folder
from tests.bad_input import tiny_ct

REPO = Path(__file__).resolve().parents[1]
needs_glibc = pytest.mark.skipif(glibc() is None, reason="glibc's mallopt (Linux) only")

# faults while a 256 MB tensor (torch's CPU allocator: plain malloc, as for activations) is allocated and filled a second time, after the first was freed
FAULTS = """
import resource, sys
import torch
from flareseg.inference.cpu_memory import keep_freed_memory
on = keep_freed_memory({"FLARESEG_KEEP_FREED_MEMORY": sys.argv[1]})
a = torch.ones(1 << 25, dtype=torch.float64); del a     # 256 MB, served by mmap unless kept
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = torch.ones(1 << 25, dtype=torch.float64)
print(on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, a.numel() * 8 // 4096)
"""


def _faults(setting: str) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, setting], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@needs_glibc
def test_freed_blocks_are_reused_without_page_faults():
    on, faults, pages = _faults("1")
    assert on and faults < 0.05 * pages, (faults, pages)
    off, faults_off, _ = _faults("0")
    assert not off
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" not in thp.read_text() and not os.environ.get("THP_MEM_ALLOC_ENABLE"):
        # default glibc (no huge pages): every page of the second tensor faults again
        assert faults_off > 0.5 * pages, (faults_off, pages)


def test_turned_off_by_the_environment_or_without_glibc(monkeypatch):
    assert keep_freed_memory({"FLARESEG_KEEP_FREED_MEMORY": "0"}) is False
    monkeypatch.setattr("flareseg.inference.cpu_memory.glibc", lambda: None)
    assert keep_freed_memory({}) is False


@needs_glibc
@pytest.mark.parametrize("setting, want", [("1", True), ("0", False)])
def test_predict_on_cpu_reports_it(tmp_path, setting, want):
    md = write_model_folder(tmp_path / "m", seed=0)
    tiny_ct(tmp_path / "a.nii.gz")
    env = {**os.environ, "FLARESEG_KEEP_FREED_MEMORY": setting}
    subprocess.run([sys.executable, "-m", "flareseg.cli", "predict", "-i", str(tmp_path / "a.nii.gz"), "-o",
                    str(tmp_path / "out"), "-m", str(md), "--device", "cpu", "-q"], check=True, env=env, cwd=REPO,
                   capture_output=True)
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text())
    assert report["keep_freed_memory"] is want
    assert report["cases"][0]["status"] == "ok"
