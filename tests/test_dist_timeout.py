"""The training's process group has its own timeout (issue 26, item 3): a rank that never joins a
training collective makes it fail after ``dist_timeout_min`` minutes (fractions allowed), while the
control group (ranks waiting for rank 0) keeps its long timeout.  Two gloo ranks on the CPU, meeting
through a file store in tmp_path (no port)."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from flareseg import distributed

ROOT = Path(__file__).resolve().parents[1]


def test_minutes_take_fractions_and_refuse_nonpositive():
    assert distributed.minutes(0.5) == datetime.timedelta(seconds=30)
    assert distributed.minutes(None) == distributed.WAIT
    with pytest.raises(ValueError, match="> 0 minutes"):
        distributed.minutes(0)


def _worker(rank, store, out_dir):
    import torch.distributed as dist
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    distributed.init_from_env("cpu", timeout_min=0.05, init_method=f"file://{store}")   # 3 s
    res = {"control_is_world": distributed._control is dist.group.WORLD}
    if rank == 0:   # rank 1 is "dead" for training: it never joins this all-reduce
        try:
            dist.all_reduce(torch.ones(1))
            res["training"] = "completed"
        except RuntimeError as e:
            res["training"] = f"failed: {type(e).__name__}"
    distributed.barrier()   # rank 1 waited here (control group) longer than the training timeout
    res["control"] = "ok"
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    os._exit(0)   # the default group is broken by the timeout: no orderly destroy


def test_training_collective_times_out_control_group_waits(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["training"].startswith("failed")
    assert r0["control"] == r1["control"] == "ok"
    assert not r0["control_is_world"] and not r1["control_is_world"]


def test_pipeline_passes_the_training_timeout(monkeypatch, tmp_path):
    """Stage 1 under torchrun joins with train_fine.dist_timeout_min; stage 2 keeps the long wait."""
    from flareseg.pipeline import __main__ as pm
    seen = []

    def fake_init(device, timeout_min=None):
        seen.append(timeout_min)
        raise SystemExit(0)

    monkeypatch.setattr(distributed, "init_from_env", fake_init)
    monkeypatch.setattr(pm, "preflight", lambda *a, **k: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text((ROOT / "configs" / "tiny.yaml").read_text())
    for stage, sets in (("1", ["train_fine.gpus=2", "train_fine.dist_timeout_min=2.5"]), ("2", [])):
        with pytest.raises(SystemExit):
            pm._main([stage, "--config", str(cfg), "--work", str(tmp_path / "w")] + sum((["--set", s] for s in sets), []))
    assert seen == [2.5, None]
