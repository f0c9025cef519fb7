"""Network architecture options of the fine/coarse plans and their measured size.

The numbers below are the measurements recorded in docs/pipeline.md ("Deviations from the
paper"): parameters of the network nnU-Net builds from our plans (15 output classes, deep
supervision heads included) and multiply-accumulates of one patch, both counted on PyTorch's meta
device.  A change to the topology derivation or to the architecture options changes them.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from flareseg.config import ConfigError, PlanConfig, load_config
from flareseg.labels import NUM_CLASSES
from tiny_model import tiny_plans
from flareseg.nnunet.planning import configuration_plan, network_size

COARSE = (2.5, 1.5, 1.5)
FINE = (2.5, 0.82, 0.82)


def _plan(**kw) -> dict:
    base = tiny_plans()["configurations"]["3d_fullres"]
    return configuration_plan(base, PlanConfig(**kw), "nnUNetPlans_x")


@pytest.mark.parametrize("kw, cls, params, macs", [
    # the project's default coarse and fine networks: nnU-Net's PlainConvUNet, features 32..320
    (dict(spacing=COARSE), "PlainConvUNet", 30_468_779, 273_570_803_712),
    (dict(spacing=FINE), "PlainConvUNet", 30_713_963, 316_525_916_160),
    # nnU-Net v2's ResEnc presets' network at the paper's patch
    (dict(spacing=COARSE, architecture="resenc"), "ResidualEncoderUNet", 101_622_955, 418_843_275_264),
    # the nearest standard-knob match of the paper's size (88.62 M, 2036 GFLOPs)
    (dict(spacing=COARSE, features_base=64, features_max=512), "PlainConvUNet", 95_310_859, 1_079_159_390_208),
])
def test_network_size_of_each_architecture_option(kw, cls, params, macs):
    size = network_size(_plan(**kw), NUM_CLASSES)
    assert size.network_class.endswith("." + cls)
    assert size.patch_size == (32, 192, 192) and size.n_stages == 6
    assert size.parameters == params
    assert size.macs == macs


def test_resenc_plan_carries_the_presets_blocks():
    arch = _plan(spacing=COARSE, architecture="resenc")["architecture"]
    kw = arch["arch_kwargs"]
    assert arch["network_class_name"] == "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    assert kw["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6]
    assert kw["n_conv_per_stage_decoder"] == [1] * 5
    assert "n_conv_per_stage" not in kw
    plain = _plan(spacing=COARSE)["architecture"]["arch_kwargs"]
    assert plain["n_conv_per_stage"] == [2] * 6 and "n_blocks_per_stage" not in plain
    assert plain["kernel_sizes"] == kw["kernel_sizes"] and plain["strides"] == kw["strides"]


def test_mac_count_matches_a_hand_count():
    # 2 stages, 1 conv each, features (2, 4), patch 8x8x8, stride 2, kernel 3, 3 classes:
    # enc0 1->2 at 8^3, enc1 2->4 at 4^3, transp 4->2 (kernel 2^3) from 4^3 voxels,
    # dec0 4->2 at 8^3, seg heads 2->3 at 8^3 (1x1x1) and, deep supervision, none for the bottom
    plans = tiny_plans(patch_size=(8, 8, 8), features=(2, 4))
    conf = plans["configurations"]["3d_fullres"]
    conf["architecture"]["arch_kwargs"]["strides"] = [[1, 1, 1], [2, 2, 2]]
    hand = 512 * 1 * 27 * 2 + 64 * 2 * 27 * 4 + 64 * 4 * 8 * 2 + 512 * 4 * 27 * 2 + 512 * 2 * 3
    assert network_size(conf, 3).macs == hand


def test_architecture_option_flows_into_the_config_and_is_checked(tmp_path):
    cfg = load_config(None, ["coarse.architecture=resenc"])
    assert cfg.coarse.architecture == "resenc" and cfg.fine.architecture == "plain"
    with pytest.raises(ConfigError, match="coarse.architecture"):
        load_config(None, ["coarse.architecture=resenc_xxl"])


@pytest.mark.slow   # plans and preprocesses a tiny dataset: ~35 s of CPU
def test_resenc_configuration_trains_with_the_flareseg_trainer(tmp_path, monkeypatch):
    """The option is not only planned: nnU-Net preprocesses it and FlareSegTrainer builds and
    steps the residual-encoder network (merge-max loss, deep supervision) on CPU."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from nnunetv2.run.run_training import get_trainer_from_args

    from flareseg.config import TrainConfig
    from flareseg.data.intake import import_dataset
    from flareseg.io import read_json
    from flareseg.nnunet.env import NNUNetPaths
    from flareseg.nnunet.planning import place_label_types, plan_and_preprocess
    from flareseg.nnunet.training import write_train_config
    from tiny import write_tiny_raw

    raw = write_tiny_raw(tmp_path / "raw", n_unlabeled=0)
    paths = NNUNetPaths.under(tmp_path)
    paths.export()
    ds = paths.raw / "Dataset902_TinyRes"
    import_dataset(ds, raw / "imagesTr", raw / "labelsTr", manifest=raw / "manifest.csv")
    pc = PlanConfig((3.0, 2.0, 2.0), (16, 32, 32), 2, 4, 16, architecture="resenc")
    pf = plan_and_preprocess(902, {"coarse": pc}, num_processes=1)
    place_label_types(ds, pf.parent)
    conf = read_json(pf)["configurations"]["coarse"]
    assert conf["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")   # restored after the test
    monkeypatch.setenv("nnUNet_compile", "f")   # restored after the test
    write_train_config(pf, "coarse", TrainConfig(epochs=1, iterations_per_epoch=1, val_iterations=1,
                                                 num_workers=0, device="cpu"))
    tr = get_trainer_from_args("Dataset902_TinyRes", "coarse", 0, "FlareSegTrainer", "nnUNetPlans",
                               device=torch.device("cpu"))
    tr.initialize()
    assert isinstance(tr.network, ResidualEncoderUNet)
    assert sum(p.numel() for p in tr.network.parameters()) == network_size(conf, NUM_CLASSES).parameters
    gen_tr, _ = tr.get_dataloaders()
    before = [p.detach().clone() for p in tr.network.parameters()]
    out = tr.train_step(next(gen_tr))
    assert np.isfinite(out["loss"])
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, tr.network.parameters()))


def test_planning_works_with_data_loading_in_the_main_process(tmp_path, monkeypatch):
    """nnUNet_n_proc_DA=0 is a valid training setting; nnU-Net's planner would pass it to
    torch.set_num_threads and crash, so planning lifts it to 1 for the planner alone."""
    import os

    from tiny import tiny_planned_dataset
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    _, pf = tiny_planned_dataset(tmp_path)
    assert pf.is_file() and os.environ["nnUNet_n_proc_DA"] == "0"
