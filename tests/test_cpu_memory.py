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
from tiny_model import write_model_folder
from tests.bad_input import tiny_ct

REPO = Path(__file__).resolve().parents[1]
needs_glibc = pytest.mark.skipif(glibc() is None, reason="glibc's mallopt (Linux) only")

# faults per window while a small 3D U-Net predicts the same window again and again on one thread
# (its first-stage activations, 32 x 32 x 96 x 96 float32 = 38 MB, are above glibc's largest mmap
# threshold, so without the setting every window maps them afresh).  Windows, not one tensor freed
# and allocated again: glibc 2.36 serves torch's 64-byte-aligned allocations with a padded request
# that a freed block of the same size cannot meet, so a lone tensor of one size grows the heap
# instead (a fixed point the real network's mix of sizes reaches after one or two windows).
WINDOWS = 8
FAULTS = """
import json, resource, sys
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from flareseg.inference.cpu_memory import keep_freed_memory
on = keep_freed_memory({"FLARESEG_KEEP_FREED_MEMORY": sys.argv[1]})
torch.set_num_threads(1)
torch.manual_seed(0)
net = PlainConvUNet(1, 3, (32, 64, 128), torch.nn.Conv3d, 3, (1, 2, 2), (2, 2, 2), 5, (2, 2), False,
                    torch.nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None,
                    torch.nn.LeakyReLU, {"inplace": True}).eval()
x = torch.randn(1, 1, 32, 96, 96)
faults, rss = [], []
with torch.inference_mode():
    for _ in range(int(sys.argv[2])):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = net(x)
        del y
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps({"on": on, "faults": faults, "peak_rss": rss, "page": resource.getpagesize()}))
"""


def _windows(setting: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, setting, str(WINDOWS)], capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


@needs_glibc
def test_windows_reuse_freed_memory_without_page_faults_or_growth():
    on = _windows("1")
    first, later = on["faults"][0], on["faults"][2:]
    assert on["on"] and first > 0
    # from the third window on, a window faults a small fraction of the first one: the median, so
    # that one window the kernel or a busy machine makes fault more (seen once under load: 4 windows
    # summed to 25 % of the first) does not decide it
    assert sorted(later)[len(later) // 2] < first / 10, on
    # ... and the process does not grow window after window
    assert on["peak_rss"][-1] - on["peak_rss"][2] < first * on["page"] / 4, on
    off = _windows("0")
    assert not off["on"]
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" not in thp.read_text() and not os.environ.get("THP_MEM_ALLOC_ENABLE"):
        # default glibc (no huge pages): the same windows map and fault their activations every time
        assert sum(off["faults"][2:]) > off["faults"][0] and sum(off["faults"][2:]) > 5 * sum(later), off


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
