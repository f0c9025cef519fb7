"""Fail before work (issue 24): a run checks at its start every device, folder and member model
its stages will need (``all``: every stage; ``stage-N``: that one), exit 2 with one line naming
the key, and the work folder is not even created."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bad_input import check_contract, md5_tree, run_command
from flareseg.pipeline.__main__ import main as pipeline_main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

# (id, stage, --set overrides (T = tmp folder), names on the line)
ROWS = [
    pytest.param("1", ["train_fine.device=cuda"], ["'train_fine.device'", "stage-1", "no CUDA device"],
                 marks=no_cuda, id="stage1-cuda"),
    pytest.param("all", ["train_coarse.device=cuda"], ["'train_coarse.device'", "stage-5", "no CUDA device"],
                 marks=no_cuda, id="all-coarse-cuda"),
    pytest.param("all", ["inference.device=cuda"], ["'inference.device'", "stage-2"], marks=no_cuda,
                 id="all-inference-cuda"),
    pytest.param("all", ["pseudolabel.member_label_dirs=[T/nope]"],
                 ["'pseudolabel.member_label_dirs'", "T/nope", "does not exist"], id="all-label-dir-missing"),
    pytest.param("2", ["pseudolabel.member_label_dirs=[T/file]"],
                 ["'pseudolabel.member_label_dirs'", "T/file", "is not a folder"], id="stage2-label-dir-file"),
    pytest.param("all", ["pseudolabel.member_models=[T/nope]"],
                 ["'pseudolabel.member_models'", "T/nope", "model folder does not exist"], id="all-member-model-missing"),
    pytest.param("all", ["pseudolabel.score=disagreement"], ["pseudolabel.score=disagreement", "two members"],
                 id="all-members-do-not-combine"),
]


def _sub(v: str, tmp: Path) -> str:
    return v.replace("T/", f"{tmp}/")


@pytest.mark.parametrize("stage,sets,names", ROWS)
def test_run_refuses_at_start_naming_the_key(tmp_path, capsys, caplog, stage, sets, names):
    work = tmp_path / "work"
    (tmp_path / "file").write_text("not a folder\n")
    argv = [stage, "--config", DEMO, "--work", work] + sum((["--set", _sub(s, tmp_path)] for s in sets), [])
    before = md5_tree([DEMO, tmp_path / "file"])
    out = run_command(pipeline_main, argv, capsys, caplog)
    check_contract(out, rc=2, names=[_sub(n, tmp_path) for n in names], reason="config error",
                   inputs_before=before, inputs=[DEMO, tmp_path / "file"], outputs=[tmp_path])
    assert not work.exists(), "work started although a stage's need was missing"
    assert len([ln for ln in out.lines if ln.strip()]) == 1, out.lines


def test_a_current_stage_is_not_checked(tmp_path, monkeypatch):
    """Only the stages that will run are checked: with stage 1 current, its device is not needed."""
    import flareseg.pipeline.__main__ as pm
    from flareseg.config import load_config
    cfg = load_config(DEMO)
    monkeypatch.setattr(type(pm.STAGES[1]), "is_current", lambda self, c, w: self.n == 1)
    assert pm.stages_to_run(cfg, tmp_path, "all", False) == [2, 3, 4, 5, 6]
    assert pm.stages_to_run(cfg, tmp_path, "1", False) == []
    assert pm.stages_to_run(cfg, tmp_path, "1", True) == [1]
