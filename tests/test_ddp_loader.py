"""The DDP data loader's augmenter arguments equal stock nnU-Net's (issue 26, item 4): stock's
``get_dataloaders`` and ours run with the augmenter classes replaced by recorders; every argument
is passed by keyword, workers, pinning and ``wait_time`` are stock's, the cached batches add up to
stock's, and ``timeout`` keeps batchgenerators' default (it had received ``0.002``)."""
from __future__ import annotations

import math

import pytest
import torch

from flareseg.config import TrainConfig
from tiny import tiny_planned_dataset

N_PROC = 8


class Recorder:
    calls: list = []

    def __init__(self, *args, **kwargs):
        Recorder.calls.append((args, kwargs))

    def __next__(self):
        return None


@pytest.fixture(scope="module")
def tiny_plans(tmp_path_factory):
    return tiny_planned_dataset(tmp_path_factory.mktemp("ddp_loader"))


def _calls(monkeypatch, make):
    import batchgenerators.dataloading.multi_threaded_augmenter as mta
    import batchgenerators.dataloading.nondet_multi_threaded_augmenter as nd
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as stock_mod
    import nnunetv2.utilities.default_n_proc_DA as n_proc
    for mod, name in ((mta, "MultiThreadedAugmenter"), (nd, "NonDetMultiThreadedAugmenter"),
                      (stock_mod, "NonDetMultiThreadedAugmenter")):
        monkeypatch.setattr(mod, name, Recorder)
    for mod in (n_proc, stock_mod):
        monkeypatch.setattr(mod, "get_allowed_n_proc_DA", lambda: N_PROC)
    Recorder.calls = []
    make().get_dataloaders()
    return list(Recorder.calls)


def _trainer(tiny_plans, cls_name: str, ddp: bool):
    from nnunetv2.run.run_training import get_trainer_from_args
    from flareseg.nnunet.training import write_train_config
    paths, pf = tiny_plans
    paths.export()
    write_train_config(pf, "fine", TrainConfig(epochs=1, iterations_per_epoch=1, val_iterations=1, seed=3))
    tr = get_trainer_from_args("Dataset901_Tiny", "fine", 0, cls_name, "nnUNetPlans", device=torch.device("cpu"))
    tr._set_batch_size_and_oversample()   # what initialize() does first (one process)
    tr.is_ddp = ddp
    return tr


def test_ddp_augmenter_arguments_equal_stocks(tiny_plans, monkeypatch):
    monkeypatch.setenv("nnUNet_compile", "f")
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: 0)
    stock = _calls(monkeypatch, lambda: _trainer(tiny_plans, "nnUNetTrainer", False))
    ours = _calls(monkeypatch, lambda: _trainer(tiny_plans, "FlareSegTrainer", True))
    plain = _calls(monkeypatch, lambda: _trainer(tiny_plans, "FlareSegTrainer", False))
    assert len(stock) == len(ours) == len(plain) == 2   # train, val
    for (s_args, s), (o_args, o), (p_args, p) in zip(stock, ours, plain):
        assert s_args == o_args == p_args == ()        # keywords only, as stock
        assert set(p) == set(s) and all(p[k] == s[k] for k in s if k != "data_loader")
        assert "timeout" not in o
        for key in ("num_processes", "pin_memory", "wait_time"):
            assert o[key] == s[key], key
        assert o["num_cached_per_queue"] == max(1, math.ceil(s["num_cached"] / s["num_processes"]))
        assert o["num_cached_per_queue"] * o["num_processes"] >= s["num_cached"]
        assert o["seeds"] == [o["seeds"][0] + i for i in range(o["num_processes"])]
    assert ours[0][1]["num_processes"] == N_PROC and stock[0][1]["num_cached"] == 6
