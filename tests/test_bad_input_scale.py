"""Bad-input matrix, scale-out launch settings (issue 15): `python -m flareseg.pipeline` with
train_fine/train_coarse gpus/nodes/rendezvous that do not fit the torchrun launch.  Each row is
refused before any work (exit 2), with one line naming the key and the reason, no traceback,
nothing written into the work folder, the config file byte-identical."""
from __future__ import annotations

from pathlib import Path

import pytest

from bad_input import check_contract, md5_tree, run_command
from flareseg.pipeline.__main__ import main

ROOT = Path(__file__).resolve().parents[1]

# (id, stage, WORLD_SIZE or None, --set overrides, key named, reason)
ROWS = [
    ("gpus_without_torchrun", "1", None, ["train_fine.gpus=2"], "train_fine.gpus",
     "launch it with `torchrun --nproc-per-node 2"),
    ("coarse_gpus_without_torchrun", "5", None, ["train_coarse.gpus=4"], "train_coarse.gpus",
     "but this launch has WORLD_SIZE=1"),
    ("nodes_without_torchrun", "1", None, ["train_fine.nodes=2", "train_fine.rendezvous=h:29500"],
     "train_fine.nodes", "--rdzv-endpoint h:29500"),
    ("torchrun_wider_than_gpus", "1", "4", ["train_fine.gpus=2"], "train_fine.gpus",
     "but this launch has WORLD_SIZE=4"),
    ("torchrun_with_default_gpus", "5", "2", [], "train_coarse.gpus",
     "set them to the torchrun launch"),
    ("nodes_without_rendezvous", "1", "4", ["train_fine.gpus=2", "train_fine.nodes=2"],
     "train_fine.rendezvous", "must name the torchrun rendezvous"),
    ("stage3_under_torchrun", "3", "2", [], "stage 3", "runs as one process"),
    ("all_with_gpus", "all", None, ["train_fine.gpus=2"], "'all'", "run the stages one by one"),
    ("batch_below_world", "1", "4", ["train_fine.gpus=4"], "fine.batch_size",
     "smaller than the world size 4"),
    ("coarse_batch_below_world", "5", "8", ["train_coarse.gpus=4", "train_coarse.nodes=2",
                                             "train_coarse.rendezvous=h:29500"], "coarse.batch_size",
     "set --set coarse.batch_size=8 (or more), or launch at most 2 processes"),
    ("gpus_zero", "1", None, ["train_fine.gpus=0"], "train_fine.gpus", "out of range (expected in [1, 1024])"),
    ("nodes_zero", "5", None, ["train_coarse.nodes=0"], "train_coarse.nodes", "out of range (expected in [1, 4096])"),
]


@pytest.mark.parametrize("stage,world,sets,key,reason", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_launch_setting_refused(stage, world, sets, key, reason, tmp_path, monkeypatch, capsys, caplog):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_bytes((ROOT / "configs" / "tiny.yaml").read_bytes())
    before = md5_tree([cfg])
    work = tmp_path / "work"
    argv = [stage, "--config", cfg, "--work", work] + sum((["--set", s] for s in sets), [])
    out = run_command(main, argv, capsys, caplog)
    check_contract(out, rc=2, names=[key], reason=reason, inputs_before=before, inputs=[cfg], outputs=[tmp_path])
    assert not work.exists()    # refused before any work
