"""Bad-input matrix for the container's entry point `sh predict.sh` (issue 14): what goes wrong with
the FLARE command line's mounts and arguments, each row checked against the whole contract. Run on
the host with the image's paths overridden (the container itself: tests/test_docker_image.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_model import tiny_plans, write_model_folder
from tests.bad_input import tiny_ct as _ct, check_contract, md5_tree, run_command

REPO = Path(__file__).resolve().parents[1]


def predict_sh(argv):
    """`sh docker/predict.sh ARGS` with the leading NAME=VALUE items as its environment."""
    env = dict(os.environ, FLARESEG=f"{sys.executable} -m flareseg.cli", PYTHONPATH=str(REPO), DEVICE="cpu")
    args = list(argv)
    while args and "=" in args[0] and not args[0].startswith("-"):
        k, _, v = args.pop(0).partition("=")
        env[k] = v
    r = subprocess.run(["sh", str(REPO / "docker" / "predict.sh"), *args], env=env, capture_output=True,
                       text=True, timeout=300)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model") / "model", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                              seed=1)


# each row: the environment/arguments, what the line must name, the reason, the exit code, the
# folders that count as inputs, the good cases' outputs

def inputs_not_mounted(tmp, model):
    return dict(env=[f"INPUT_DIR={tmp / 'inputs'}"], names=[str(tmp / "inputs")], reason="does not exist",
                rc=2, inputs=[model])


def inputs_mounted_empty(tmp, model):
    (tmp / "inputs").mkdir()
    (tmp / "inputs" / "README.txt").write_text("put the CT files here\n")
    return dict(env=[f"INPUT_DIR={tmp / 'inputs'}"], names=[str(tmp / "inputs")],
                reason="holds no image files", rc=2, inputs=[tmp / "inputs", model])


def image_built_without_model(tmp, model):
    (tmp / "inputs").mkdir()
    _ct(tmp / "inputs" / "Case_00001_0000.nii.gz")
    return dict(env=[f"INPUT_DIR={tmp / 'inputs'}", f"MODEL_DIR={tmp / 'opt_model'}"],
                names=[str(tmp / "opt_model")], reason="does not exist", rc=2, inputs=[tmp / "inputs"])


def truncated_case_in_batch(tmp, model):
    inp = tmp / "inputs"
    inp.mkdir()
    _ct(inp / "Case_00001_0000.nii.gz")
    data = _ct(tmp / "full.nii.gz").read_bytes()
    (inp / "Case_00002_0000.nii.gz").write_bytes(data[: len(data) // 2])   # an interrupted upload
    return dict(env=[f"INPUT_DIR={inp}"], names=[str(inp / "Case_00002_0000.nii.gz")], reason="truncated",
                rc=1, inputs=[inp, model],
                done=[tmp / "outputs" / "Case_00001.nii.gz"])


def bad_extra_argument(tmp, model):
    (tmp / "inputs").mkdir()
    _ct(tmp / "inputs" / "Case_00001_0000.nii.gz")
    return dict(env=[f"INPUT_DIR={tmp / 'inputs'}"], args=["--step-size", "2"], names=["--step-size"],
                reason="(0, 1]", rc=2, inputs=[tmp / "inputs", model])


ROWS = [inputs_not_mounted, inputs_mounted_empty, image_built_without_model, truncated_case_in_batch,
        bad_extra_argument]


@pytest.mark.parametrize("row", ROWS, ids=[r.__name__ for r in ROWS])
def test_predict_sh_bad_input(row, model, tmp_path, capsys, caplog):
    case = row(tmp_path, model)
    out = tmp_path / "outputs"
    before = md5_tree(case["inputs"])
    argv = [f"MODEL_DIR={model}", f"OUTPUT_DIR={out}", f"REPORT={tmp_path / 'report.json'}", *case["env"],
            *case.get("args", [])]
    res = run_command(predict_sh, argv, capsys, caplog)
    check_contract(res, rc=case["rc"], names=case["names"], reason=case["reason"], inputs_before=before,
                   inputs=case["inputs"], outputs=[out], done=case.get("done", ()))
    if case["rc"] == 2:   # refused before any work: no output folder made
        assert not out.exists()
