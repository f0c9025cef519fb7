"""The submission image installs exactly the package versions the tests run with.

docker/requirements.txt pins the transitive closure of pyproject's runtime dependencies as installed
in the test environment; the Dockerfile installs it, its base is the pinned torch's PyTorch image,
and the user/workspace block of the real and the CPU-test Dockerfile is the same.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure() -> dict[str, tuple[str, str]]:
    """canonical name -> (name, installed version) for every package pyproject's dependencies need,
    transitively, in this environment (requirement markers evaluated here, no extras)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    todo, seen = [Requirement(d) for d in deps], {}
    while todo:
        req = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        key = _canon(req.name)
        if key in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:   # a requirement the environment does not hold
            seen[key] = (req.name, "NOT INSTALLED")
            continue
        seen[key] = (dist.metadata["Name"], dist.version)
        todo.extend(Requirement(r) for r in dist.requires or [])
    return seen


def pinned() -> dict[str, tuple[str, str]]:
    pins = {}
    for line in (DOCKER / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"docker/requirements.txt: {line!r} is not pinned with =="
            pins[_canon(name)] = (name, version)
    return pins


@pytest.mark.skipif(sys.version_info < (3, 11), reason="make venv installs the pinned versions only on "
                    "Python >= 3.11 (numpy 2.4 needs it); older Pythons get the newest compatible releases")
def test_image_pins_equal_the_test_environment():
    want, have = runtime_closure(), pinned()
    lines = "\n".join(f"{n}=={v}" for _, (n, v) in sorted(want.items()))
    diff = []
    for k in sorted(want.keys() | have.keys()):
        w, h = want.get(k), have.get(k)
        if (w and w[1]) != (h and h[1]):
            diff.append(f"{(w or h)[0]}: pinned {h[1] if h else '-'}, tested {w[1] if w else '-'}")
    assert not diff, ("docker/requirements.txt differs from the test environment:\n  " + "\n  ".join(diff)
                      + "\nthe pins for this environment (paste below the header comment):\n" + lines)
    for core in ("torch", "numpy", "simpleitk", "connected-components-3d", "fastremap", "nnunetv2",
                 "scipy", "pyyaml", "tqdm", "scikit-image", "matplotlib"):
        assert core in have, core


def test_dockerfile_installs_the_pins_on_the_pinned_torch_base():
    text = (DOCKER / "Dockerfile").read_text()
    torch_version = pinned()["torch"][1]
    assert "COPY docker/requirements.txt /tmp/requirements.txt" in text
    assert "pip install -r /tmp/requirements.txt" in text
    assert "pip install -c /tmp/requirements.txt --no-deps ." in text
    assert f"== '{torch_version}'" in text                     # the build checks the torch it got
    base = re.search(r"^ARG BASE=(\S+)", text, re.M).group(1)
    assert re.search(r"^FROM \$\{BASE\}", text, re.M)
    import torch
    cuda = torch.version.cuda   # the CUDA build the tests run with (None on a CPU-only torch)
    assert base.startswith(f"pytorch/pytorch:{torch_version}-cuda"), base
    if cuda:
        assert base.startswith(f"pytorch/pytorch:{torch_version}-cuda{cuda}-"), (base, cuda)


def _user_block(path: Path) -> str:
    text = path.read_text()
    start = text.index("# The image starts as root")
    return text[start:]


def test_cpu_variant_has_the_real_images_user_and_entry_point():
    assert _user_block(DOCKER / "Dockerfile") == _user_block(DOCKER / "Dockerfile.cpu")
    real = (DOCKER / "Dockerfile").read_text()
    assert not re.search(r"^USER ", real, re.M)   # starts as root; predict.sh drops to flare
    assert "COPY docker/predict.sh /workspace/predict.sh" in (DOCKER / "Dockerfile.cpu").read_text()
