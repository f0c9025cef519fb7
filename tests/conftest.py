"""Shared fixtures: location of the real CT samples in ../shared/data and tiny volumes."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# dtype "auto" picks bfloat16 on CPUs with AMX/AVX512-BF16: the suite's numbers (labels equal to
# stock's, fixed Dice) are float32's on every machine, child processes included; the bf16 path is
# tested explicitly (tests/test_cpu_dtype.py)
os.environ["FLARESEG_CPU_FLAGS"] = ""
# inference.runtime: openvino caches converted networks; the suite's go to a folder of its own
# (child processes too), never to the user's ~/.cache/flareseg
os.environ["FLARESEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="flareseg_test_cache_")
atexit.register(shutil.rmtree, os.environ["FLARESEG_CACHE_DIR"], True)
# `flareseg predict` on a CPU stops glibc from returning freed memory (flareseg.inference.cpu_memory);
# in-process CLI tests would switch it on for the whole pytest process: off here, tested in a child
os.environ["FLARESEG_KEEP_FREED_MEMORY"] = "0"


def shared_data_dir() -> Path:
    env = os.environ.get("FLARESEG_SHARED_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with the real CT samples (see its README); tests skip only if it is absent."""
    d = shared_data_dir()
    if not (d / "README.md").exists():
        pytest.skip(f"real test data not found at {d} (set FLARESEG_SHARED_DATA)")
    return d


def _skip_marked(items, marker: str, reason: str) -> None:
    skip = pytest.mark.skip(reason=reason)
    for it in items:
        if marker in it.keywords:
            it.add_marker(skip)


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        _skip_marked(items, "gpu", "needs a CUDA device")
    # container tests build and run an image (podman, root): only when asked for with -m docker
    if "docker" not in (config.getoption("markexpr", "") or ""):
        _skip_marked(items, "docker", "container test: run with pytest -m docker (see docker/README.md)")
