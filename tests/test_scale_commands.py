"""Every training/torchrun command in docs/scale.md and docs/benchmarks.md is valid for the config
it names (issue 26, item 2): the config loads with the command's ``--set`` list, the launch fits
``gpus`` x ``nodes``, and the global batch is at least the number of processes."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from flareseg.config import load_config
from flareseg.distributed import batch_problem
from flareseg.pipeline.__main__ import DISTRIBUTED_STAGES, launch_error
from flareseg.pipeline.preflight import STAGE_BATCH, batch_problems

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/scale.md", "docs/benchmarks.md")
LAUNCHES = re.compile(r"torchrun|bench\.ddp_speed|flareseg\.pipeline \d")


def commands(text: str) -> list[str]:
    """Shell commands of fenced blocks (continuations joined) and of inline code spans."""
    out = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        out += [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    out += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)]
    return [c for c in out if "bench.ddp_speed" in c or (LAUNCHES.search(c) and "--config" in c)]


def _value(tokens: list[str], *names: str, default=None):
    for i, t in enumerate(tokens):
        for n in names:
            if t == n and i + 1 < len(tokens):
                return tokens[i + 1]
            if t.startswith(n + "="):
                return t.split("=", 1)[1]
    return default


def launch(cmd: str) -> tuple[str, list[str], int, str]:
    """``(config, overrides, world size, stage)`` of a documented command."""
    tokens = shlex.split(cmd)
    sets = [tokens[i + 1] for i, t in enumerate(tokens) if t == "--set"]
    if "bench.ddp_speed" in tokens:
        n = int(_value(tokens, "--nproc", default=2))
        return _value(tokens, "--config", default="configs/tiny.yaml"), sets + [f"train_fine.gpus={n}"], n, "1"
    world = 1
    if "torchrun" in tokens:
        world = int(_value(tokens, "--nproc-per-node", default=1)) * int(_value(tokens, "--nnodes", default=1))
    stage = tokens[tokens.index("flareseg.pipeline") + 1] if "flareseg.pipeline" in tokens else "?"
    return _value(tokens, "--config"), sets, world, stage


def documented() -> list[tuple[str, str]]:
    return [(doc, c) for doc in DOCS for c in commands((ROOT / doc).read_text())]


def test_the_docs_hold_the_multi_process_commands():
    cmds = [c for _, c in documented()]
    assert sum("torchrun" in c for c in cmds) >= 4 and any("bench.ddp_speed" in c for c in cmds)
    assert any("--nnodes 4" in c for c in cmds)   # the SLURM example, continuations joined


@pytest.mark.parametrize("doc,cmd", documented(), ids=lambda v: v if v in DOCS else " ".join(v.split()[:8]))
def test_documented_command_fits_its_config(doc, cmd, monkeypatch):
    config, sets, world, stage = launch(cmd)
    if any("<" in s for s in sets):
        pytest.skip("placeholder override")
    cfg = load_config(ROOT / config, sets)
    if stage.isdigit() and int(stage) in DISTRIBUTED_STAGES:
        monkeypatch.setenv("WORLD_SIZE", str(world))
        assert launch_error(cfg, stage) is None, cmd
        assert batch_problems(cfg, [int(stage)]) == [], cmd
    for plan, train in STAGE_BATCH.values():   # every training the config asks for
        tc = getattr(cfg, train)
        assert batch_problem(getattr(cfg, plan).batch_size, tc.gpus * tc.nodes, plan) is None, cmd


def test_the_check_catches_the_old_commands(monkeypatch):
    old = ("torchrun --standalone --nproc-per-node 8 -m flareseg.pipeline 1 "
           "--config configs/flare23.yaml --set train_fine.gpus=8")
    config, sets, world, stage = launch(old)
    assert world == 8 and stage == "1"
    problems = batch_problems(load_config(ROOT / config, sets), [1])
    assert problems and "fine.batch_size' = 4" in problems[0] and "world size 8" in problems[0]
