"""The seeds test (issue 28 item 1): the trainer's ``seed`` reaches every random stream (initial
weights, label-type batch order, nnU-Net's augmentation with elastic deformation, CutMix draws),
and the benchmarks' ``--seed`` reaches the trainer's seed.  Two runs with one seed train to the
same weights; another seed changes each stream."""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest
import torch

from flareseg.config import ElasticConfig, TrainConfig
from tiny import tiny_planned_dataset

DATASET = "Dataset901_Tiny"
ELASTIC = ElasticConfig(probability=1.0, sigma=(2.0, 3.0), magnitude=(1.0, 2.0))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny planned dataset and a CTO pool of its tumors (the CutMix stream)."""
    from flareseg.config import CTOConfig
    from flareseg.cto.pool import build_pool
    from flareseg.io import read_json
    from flareseg.nnunet.plans import normalizer
    from flareseg.pipeline.stage3_cto import _read_cases, tumor_cases
    root = tmp_path_factory.mktemp("seeds")
    paths, pf = tiny_planned_dataset(root)
    plans = read_json(pf)
    build_pool(_read_cases(tumor_cases(paths.raw / DATASET, None)), root / "pool",
               CTOConfig(margin_z=(1, 2), margin_xy=(2, 3), min_voxels=3),
               plans["configurations"]["fine"]["spacing"], normalizer(plans, "fine"), progress=False)
    return paths, pf, root / "pool"


def _config(seed: int) -> TrainConfig:
    return TrainConfig(epochs=1, iterations_per_epoch=2, val_iterations=1, num_workers=0, device="cpu",
                       save_every=1, seed=seed, elastic=ELASTIC)


def _extra(pool) -> dict:
    return {"cutmix": {"pool": str(pool), "probability": 1.0, "max_objects": 1}}


def _started(tiny, seed: int, monkeypatch):
    """A trainer of ``seed`` after ``on_train_start`` (seeded, network built, loaders ready)."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from flareseg.nnunet.training import write_train_config
    paths, pf, pool = tiny
    paths.export()
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "f")
    write_train_config(pf, "fine", _config(seed), _extra(pool))
    tr = get_trainer_from_args(DATASET, "fine", 0, "FlareSegTrainer", "nnUNetPlans", device=torch.device("cpu"))
    tr.on_train_start()
    return tr


def _streams(tr) -> dict:
    """What each random stream produced: initial weights, batch cases, augmented patches, CutMix."""
    from flareseg.nnunet.augmentation import spatial_transforms
    cutmix = tr.dataloader_train.data_loader.cutmix
    assert [t.p_elastic_deform for t in spatial_transforms(cutmix.transforms)] == [1.0]   # elastic is on
    batches = [next(tr.dataloader_train) for _ in range(4)]
    tgt = lambda b: b["target"][0] if isinstance(b["target"], (list, tuple)) else b["target"]  # noqa: E731
    return {"weights": tr.weights_digest(),
            "order": [list(b["keys"]) for b in batches],
            "augmentation": [b["data"].numpy().copy() for b in batches],
            "labels": [tgt(b).numpy().copy() for b in batches],
            "cutmix": [tuple(b["cutmix_pasted"]) for b in batches],
            "cutmix_params": cutmix.last_params}


def test_one_seed_gives_the_same_streams_another_changes_each(tiny, monkeypatch):
    a, b, c = (_streams(_started(tiny, s, monkeypatch)) for s in (3, 3, 4))
    assert a["weights"] == b["weights"] and a["order"] == b["order"] and a["cutmix"] == b["cutmix"]
    for x, y in zip(a["augmentation"] + a["labels"], b["augmentation"] + b["labels"]):
        np.testing.assert_array_equal(x, y)
    assert repr(a["cutmix_params"]) == repr(b["cutmix_params"])
    # another seed: every stream moves
    assert a["weights"] != c["weights"]
    assert a["order"] != c["order"]
    same_cases = [i for i in range(4) if a["order"][i] == c["order"][i]]
    assert not all(np.array_equal(a["augmentation"][i], c["augmentation"][i]) for i in range(4))
    for i in same_cases:   # the same cases, other crops/augmentation
        assert not np.array_equal(a["augmentation"][i], c["augmentation"][i])
    assert repr(a["cutmix_params"]) != repr(c["cutmix_params"])


def test_same_seed_trains_to_the_same_weights_another_seed_does_not(tiny, tmp_path):
    from flareseg.nnunet.checkpoint import load_checkpoint
    from flareseg.nnunet.env import NNUNetPaths
    from flareseg.nnunet.training import model_folder, train
    paths, _, pool = tiny
    weights = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        res = NNUNetPaths(paths.raw, paths.preprocessed, tmp_path / name)
        res.export()
        train(DATASET, "fine", _config(seed), paths.preprocessed, res.results, extra=_extra(pool))
        ck = model_folder(res.results, DATASET, "fine") / "fold_0" / "checkpoint_final.pth"
        weights.append(load_checkpoint(ck)["network_weights"])
    wa, wb, wc = weights
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_bench_seeds_reach_the_trainer_seed():
    from bench.evidence import arm_config
    from bench.loss_ablation import variant_config
    args = argparse.Namespace(epochs=2, iters=3, val_iters=1, workers=0, device="cpu", seed=7)
    assert variant_config(TrainConfig(), "naive", args).seed == 7
    tc = arm_config(TrainConfig(), 2, 3, 5, 0.0, loss="naive")
    assert (tc.seed, tc.loss, tc.epochs, tc.iterations_per_epoch, tc.elastic.probability) == (5, "naive", 2, 3, 0.0)
    assert replace(tc, seed=6) != tc
