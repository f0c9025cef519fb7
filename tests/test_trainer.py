"""FlareSegTrainer end to end on a tiny dataset: label-type batches, partial-label loss, a standard
nnU-Net model folder that stock nnU-Net can load and predict with."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from flareseg.config import TrainConfig
from tiny import TYPES, tiny_planned_dataset


@pytest.fixture(scope="module")
def tiny_plans(tmp_path_factory):
    return tiny_planned_dataset(tmp_path_factory.mktemp("trainer"))


def test_label_type_loader_batches_hold_one_type(tiny_plans, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args
    from flareseg.nnunet.training import write_train_config

    paths, pf = tiny_plans
    paths.export()
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")   # restored after the test
    monkeypatch.setenv("nnUNet_compile", "f")   # restored after the test
    write_train_config(pf, "fine", TrainConfig(epochs=1, iterations_per_epoch=1, val_iterations=1))
    tr = get_trainer_from_args("Dataset901_Tiny", "fine", 0, "FlareSegTrainer", "nnUNetPlans",
                               device=torch.device("cpu"))
    tr.initialize()
    gen_tr, _ = tr.get_dataloaders()
    seen = set()
    for _ in range(12):
        b = next(gen_tr)
        t = tuple(b["label_type"])
        seen.add(t)
        assert all(TYPES[k] == t for k in b["keys"]), (t, b["keys"])
        tgt = b["target"][0] if isinstance(b["target"], list) else b["target"]
        present = set(np.unique(tgt.numpy()).tolist()) - {0, -1}
        assert present <= set(t)  # labels only ever hold annotated classes
    assert len(seen) >= 2


def test_training_writes_standard_model_folder_loadable_by_stock_nnunet(tiny_plans, tmp_path):
    from flareseg.nnunet.env import model_folder
    from flareseg.nnunet.training import train

    paths, pf = tiny_plans
    paths.export()
    tc = TrainConfig(epochs=2, iterations_per_epoch=2, val_iterations=1, num_workers=0, device="cpu",
                     save_every=1)
    summary = train("Dataset901_Tiny", "fine", tc, paths.preprocessed, paths.results)
    mdir = model_folder(paths.results, "Dataset901_Tiny", "fine")
    assert (mdir / "fold_0" / "checkpoint_final.pth").exists()
    assert (mdir / "plans.json").exists() and (mdir / "dataset.json").exists()
    plans = json.loads((mdir / "plans.json").read_text())
    assert plans["configurations"]["fine"]["flareseg_train"]["epochs"] == 2
    assert summary["epochs"] == 2 and summary["final_train_loss"] is not None
    assert set(summary["val_pseudo_dice"]) >= {"liver", "tumor"}
    # rerun = resume: nothing retrained
    mtime = (mdir / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns
    train("Dataset901_Tiny", "fine", tc, paths.preprocessed, paths.results)
    assert (mdir / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns == mtime

    # stock nnU-Net finds the trainer via nnUNet_extTrainer and predicts with the folder
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(mdir), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    img = str(paths.raw / "Dataset901_Tiny" / "imagesTr" / "t00_0000.nii.gz")
    out = tmp_path / "pred"
    pred.predict_from_files([[img]], [str(out / "t00")], save_probabilities=False, overwrite=True,
                            num_processes_preprocessing=1, num_processes_segmentation_export=1)
    import SimpleITK as sitk
    seg = sitk.ReadImage(str(out / "t00.nii.gz"))
    assert seg.GetSize() == (40, 40, 24)


def test_cutmix_loader_pastes_tumor_into_batches_without_tumor(tiny_plans, tmp_path, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args
    from flareseg.config import CTOConfig
    from flareseg.cto.pool import build_pool
    from flareseg.io import read_json
    from flareseg.nnunet.plans import normalizer
    from flareseg.nnunet.training import write_train_config
    from flareseg.pipeline.stage3_cto import _read_cases, tumor_cases

    paths, pf = tiny_plans
    paths.export()
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")   # restored after the test
    monkeypatch.setenv("nnUNet_compile", "f")   # restored after the test
    ds = paths.raw / "Dataset901_Tiny"
    plans = read_json(pf)
    conf = plans["configurations"]["fine"]
    idx = build_pool(_read_cases(tumor_cases(ds, None)), tmp_path / "pool",
                     CTOConfig(margin_z=(1, 2), margin_xy=(2, 3), min_voxels=3),
                     conf["spacing"], normalizer(plans, "fine"), progress=False)
    assert len(idx["objects"]) == 6   # one tumor per case with tumor annotated
    props = plans["foreground_intensity_properties_per_channel"]["0"]   # CT normalisation, not z-score
    assert normalizer(plans, "fine")(np.array([[[-500.0]]]))[0, 0, 0] == pytest.approx(
        (props["percentile_00_5"] - props["mean"]) / props["std"], rel=1e-5)
    write_train_config(pf, "fine", TrainConfig(epochs=1, iterations_per_epoch=1, val_iterations=1))
    p = read_json(pf)
    p["configurations"]["fine"]["flareseg_train"]["cutmix"] = {"pool": str(tmp_path / "pool"),
                                                              "probability": 1.0, "max_objects": 1}
    pf.write_text(json.dumps(p))
    tr = get_trainer_from_args("Dataset901_Tiny", "fine", 0, "FlareSegTrainer", "nnUNetPlans",
                               device=torch.device("cpu"))
    tr.initialize()
    gen_tr, _ = tr.get_dataloaders()
    pasted_batches = 0
    for _ in range(15):
        b = next(gen_tr)
        base = {TYPES[k] for k in b["keys"]}
        assert len(base) == 1
        base = base.pop()
        if 14 in base:
            assert not any(b["cutmix_pasted"]) and tuple(b["label_type"]) == base
            continue
        # probability 1: every sample pasted unless no location fits inside the body (counted)
        assert all(p or f for p, f in zip(b["cutmix_pasted"], b["cutmix_no_fit"]))
        types = b["label_type"] if isinstance(b["label_type"][0], (list, tuple)) else [b["label_type"]] * 2
        tgt = b["target"][0] if isinstance(b["target"], list) else b["target"]
        for i, (t, p) in enumerate(zip(types, b["cutmix_pasted"])):
            # the pasted box asserts only what its source case annotates: the (1, 3, 14) sources
            # keep the liver, the tumor-only sources (t06, t07) narrow the sample to tumor
            assert tuple(t) in ((1, 14), (14,)) if p else tuple(t) == base
            assert set(np.unique(tgt[i].numpy()).tolist()) - {0, -1} <= set(t)
        pasted_batches += any(b["cutmix_pasted"])
    assert pasted_batches > 0


_TRAIN_SCRIPT = """
import sys
from pathlib import Path
from flareseg.config import TrainConfig
from flareseg.nnunet.env import NNUNetPaths
from flareseg.nnunet.training import train
root, results = Path(sys.argv[1]), Path(sys.argv[2])
p = NNUNetPaths(root / "nnUNet_raw", root / "nnUNet_preprocessed", results)
p.export()
tc = TrainConfig(epochs=4, iterations_per_epoch=2, val_iterations=1, num_workers=0, device="cpu",
                 save_every=1, seed=7)
if __name__ == "__main__":
    train("Dataset901_Tiny", "fine", tc, p.preprocessed, p.results)
"""


def test_killed_training_resumes_to_the_same_weights(tiny_plans, tmp_path):
    """Seeded training killed after a checkpoint and resumed ends with the weights of an
    uninterrupted run (generators are checkpointed next to the weights)."""
    import signal
    import subprocess
    import sys
    import time

    paths, _ = tiny_plans
    root = paths.raw.parent
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_SCRIPT)
    run = lambda res: subprocess.run([sys.executable, str(script), str(root), str(res)],  # noqa: E731
                                     capture_output=True, text=True)
    a = run(tmp_path / "res_a")
    assert a.returncode == 0, a.stderr[-3000:]
    fold_b = tmp_path / "res_b" / "Dataset901_Tiny" / "FlareSegTrainer__nnUNetPlans__fine" / "fold_0"
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(tmp_path / "res_b")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (fold_b / "checkpoint_latest.pth.rng").exists():
        assert proc.poll() is None and time.time() - t0 < 300, "training ended before a checkpoint"
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (fold_b / "checkpoint_final.pth").exists()
    b = run(tmp_path / "res_b")
    assert b.returncode == 0, b.stderr[-3000:]
    from flareseg.nnunet.checkpoint import load_checkpoint
    wa = load_checkpoint(tmp_path / "res_a" / "Dataset901_Tiny" / "FlareSegTrainer__nnUNetPlans__fine" / "fold_0"
                         / "checkpoint_final.pth")["network_weights"]
    wb = load_checkpoint(fold_b / "checkpoint_final.pth")["network_weights"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_comes_from_the_config(tiny_plans, name, cls, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args
    from flareseg.nnunet.training import write_train_config

    paths, pf = tiny_plans
    paths.export()
    monkeypatch.setenv("nnUNet_compile", "f")   # restored after the test
    write_train_config(pf, "fine", TrainConfig(epochs=3, iterations_per_epoch=1, optimizer=name, lr=0.004,
                                               weight_decay=1e-4))
    tr = get_trainer_from_args("Dataset901_Tiny", "fine", 0, "FlareSegTrainer", "nnUNetPlans",
                               device=torch.device("cpu"))
    tr.initialize()
    assert type(tr.optimizer) is cls
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.004)
    assert tr.optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-4)
    tr.lr_scheduler.step(2)   # poly schedule applies to either optimizer
    assert tr.optimizer.param_groups[0]["lr"] < 0.004


def test_unknown_optimizer_is_rejected_with_the_key(tiny_plans):
    from nnunetv2.run.run_training import get_trainer_from_args

    paths, pf = tiny_plans
    paths.export()
    plans = json.loads(pf.read_text())
    plans["configurations"]["fine"]["flareseg_train"] = {"optimizer": "adam"}
    pf.write_text(json.dumps(plans))
    tr = get_trainer_from_args("Dataset901_Tiny", "fine", 0, "FlareSegTrainer", "nnUNetPlans",
                               device=torch.device("cpu"))
    with pytest.raises(ValueError, match="optimizer"):
        tr.initialize()


def test_recent_pseudo_dice_averages_finite_values_of_the_last_epochs():
    from flareseg.nnunet.training import recent_pseudo_dice
    nan = float("nan")
    hist = [[0.0, 0.0, 0.0]] * 5 + [[0.5, nan, nan], [0.7, 0.2, nan], [nan, 0.4, nan]]
    assert recent_pseudo_dice(hist, last=3) == [0.6, 0.3, None]
    assert recent_pseudo_dice(hist, last=8)[0] == pytest.approx(1.2 / 7, abs=1e-4)
    assert recent_pseudo_dice([]) == []


@pytest.mark.parametrize("ddp", [False, True])
def test_loss_is_built_with_the_ddp_flag(tiny_plans, ddp):
    """As stock's ``_build_loss`` passes ``ddp=self.is_ddp``: under DDP the batch Dice statistics
    are summed over the ranks (a global batch Dice), otherwise they stay per process."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from flareseg.nnunet.training import write_train_config

    paths, pf = tiny_plans
    paths.export()
    write_train_config(pf, "fine", TrainConfig(epochs=1, iterations_per_epoch=1))
    tr = get_trainer_from_args("Dataset901_Tiny", "fine", 0, "FlareSegTrainer", "nnUNetPlans",
                               device=torch.device("cpu"))
    tr.is_ddp = ddp
    loss = tr._build_loss()
    assert loss.loss.ddp is ddp
    assert loss.loss.batch_dice == tr.configuration_manager.batch_dice


@pytest.mark.parametrize("device,compile_network,flag", [("cuda", True, "t"), ("cuda", False, "f"),
                                                         ("cpu", True, "f")])
def test_backend_settings_match_stock_training(monkeypatch, device, compile_network, flag):
    """Stock's run_training turns cudnn.benchmark on for CUDA and nnU-Net 2.8.1 compiles the network
    on CUDA by default: the same unless the config's ``compile`` is off; never on the CPU."""
    from flareseg.nnunet.training import backend_settings

    monkeypatch.setenv("nnUNet_compile", "unset")   # restored after the test
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    got = backend_settings(torch.device(device), compile_network)
    assert os.environ["nnUNet_compile"] == flag == got["nnUNet_compile"]
    assert torch.backends.cudnn.benchmark is (device == "cuda")
    assert torch.backends.cudnn.deterministic is (device != "cuda")
    assert TrainConfig().compile is True   # the default is stock's


@pytest.mark.parametrize("mirror,rotation", [(None, None), ((), 15.0), ((0,), None)])
def test_mirroring_and_rotation_come_from_the_config(tiny_plans, mirror, rotation, monkeypatch):
    """train_*.mirror_axes / max_rotation_deg reach nnU-Net's transforms and the checkpoint's
    inference mirroring axes; unset, nnU-Net's own choice stays (every axis mirrored)."""
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from nnunetv2.run.run_training import get_trainer_from_args
    from flareseg.nnunet.augmentation import spatial_transforms
    from flareseg.nnunet.training import write_train_config

    paths, pf = tiny_plans
    paths.export()
    monkeypatch.setenv("nnUNet_compile", "f")   # restored after the test
    write_train_config(pf, "fine", TrainConfig(epochs=1, iterations_per_epoch=1, mirror_axes=mirror,
                                               max_rotation_deg=rotation))
    tr = get_trainer_from_args("Dataset901_Tiny", "fine", 0, "FlareSegTrainer", "nnUNetPlans",
                               device=torch.device("cpu"))
    rot, _, initial, axes = tr.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert tuple(axes) == ((0, 1, 2) if mirror is None else mirror)
    assert tuple(tr.inference_allowed_mirroring_axes) == tuple(axes)
    if rotation is not None:
        assert rot[1] == pytest.approx(np.radians(rotation)) and rot[0] == pytest.approx(-np.radians(rotation))
    patch = tr.configuration_manager.patch_size
    assert all(i >= p for i, p in zip(initial, patch))
    tf = tr.get_training_transforms(patch, rot, None, axes, False, use_mask_for_norm=[False],
                                    is_cascaded=False, foreground_labels=[1], regions=None, ignore_label=None)
    spatial = list(spatial_transforms(tf))
    assert len(spatial) == 1

    def walk(t):
        yield t
        for c in getattr(t, "transforms", None) or ():
            yield from walk(c)
        if getattr(t, "transform", None) is not None:
            yield from walk(t.transform)
    mirrors = [t for t in walk(tf) if isinstance(t, MirrorTransform)]
    assert (len(mirrors) == 0) == (len(axes) == 0)
    assert all(tuple(m.allowed_axes) == tuple(axes) for m in mirrors)
