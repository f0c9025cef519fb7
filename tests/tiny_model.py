"""Small nnU-Net v2 model folders: test scaffolding (not part of the library), which benches use too.

:func:`write_model_folder` writes one with random weights in the standard layout (``dataset.json``,
``plans.json``, ``fold_X/checkpoint_final.pth``) that loads in stock ``nnUNetPredictor`` as well as
in :func:`flareseg.nnunet.model.load_model`; optionally the final layer's bias is set per class so
that the prediction is dominated by a known rule instead of noise.  :func:`tiny_plans` gives its
plans; :func:`fit_model_folder` trains it briefly so its output follows the anatomy.

Tests import it as ``tiny_model`` (pytest puts ``tests/`` on ``sys.path``, as for ``tiny`` and
``bad_input``); benches as ``tests.tiny_model`` (``python -m bench.NAME`` from the repository root).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from flareseg.labels import CLASS_NAMES
from flareseg.nnunet.checkpoint import load_checkpoint, save_checkpoint
from flareseg.nnunet.model import build_network

#: CT foreground intensity statistics in HU (typical of abdominal CT)
DEFAULT_INTENSITY = {"max": 1500.0, "mean": 90.0, "median": 80.0, "min": -1000.0,
                     "percentile_00_5": -960.0, "percentile_99_5": 1200.0, "std": 160.0}


def _architecture(n_stages: int, features: Sequence[int], patch: Sequence[int], convs: int = 1) -> dict:
    strides = [[1, 1, 1]] + [[2 if p // 2 ** (s - 1) >= 8 else 1 for p in patch] for s in range(1, n_stages)]
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages, "features_per_stage": list(features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n_stages, "strides": strides,
            "n_conv_per_stage": [convs] * n_stages, "n_conv_per_stage_decoder": [convs] * (n_stages - 1),
            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def tiny_plans(patch_size: Sequence[int] = (16, 32, 32), spacing: Sequence[float] = (2.5, 1.5, 1.5),
               features: Sequence[int] = (4, 8, 16), configuration: str = "3d_fullres",
               transpose_forward: Sequence[int] = (0, 1, 2), intensity: dict | None = None,
               convs_per_stage: int = 1) -> dict:
    """nnU-Net v2 plans with one 3-D configuration (PlainConvUNet, CT normalisation); small by
    default, nnU-Net's own network size with ``features=(32, 64, 128, 256, 320, 320)`` and
    ``convs_per_stage=2``."""
    tb = [int(i) for i in torch.argsort(torch.tensor(list(transpose_forward))).tolist()]
    order3 = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [int(p) * 2 for p in patch_size],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose_forward), "transpose_backward": tb,
        "configurations": {configuration: {
            "data_identifier": "nnUNetPlans_" + configuration, "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch_size),
            "median_image_size_in_voxels": [int(p) * 2 for p in patch_size], "spacing": list(spacing),
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": order3,
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {**order3, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**order3, "order": 1},
            "architecture": _architecture(len(features), features, patch_size, convs_per_stage),
            "batch_dice": False,
        }},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(intensity or DEFAULT_INTENSITY)},
    }


def write_model_folder(dest: str | Path, plans: dict | None = None, labels: dict[int, str] | None = None,
                       folds: Sequence[int | str] = (0,), seed: int = 0,
                       class_bias: Sequence[float] | None = None,
                       mirror_axes: Sequence[int] | None = (0, 1, 2),
                       trainer_name: str = "nnUNetTrainer") -> Path:
    """Write a model folder with random weights to ``dest``; returns ``dest``.

    ``labels`` maps index -> name (default: the FLARE23 classes).  ``class_bias`` (one value per
    class) is added to the final 1x1x1 convolution's bias of the full-resolution head.
    """
    dest = Path(dest)
    plans = plans or tiny_plans()
    labels = labels or CLASS_NAMES
    configuration = next(iter(plans["configurations"]))
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {name: i for i, name in sorted(labels.items())},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (dest / "plans.json").write_text(json.dumps(plans, indent=2))
    for i, f in enumerate(folds):
        torch.manual_seed(seed + i)
        net = build_network(plans, dataset_json, configuration, trainer_name, deep_supervision=True)
        if class_bias is not None:
            head = net.decoder.seg_layers[-1]
            with torch.no_grad():
                head.bias.add_(torch.as_tensor(list(class_bias), dtype=head.bias.dtype))
        ck = {"network_weights": net.state_dict(), "optimizer_state": None, "grad_scaler_state": None,
              "logging": {}, "_best_ema": None, "current_epoch": 0, "trainer_name": trainer_name,
              "inference_allowed_mirroring_axes": tuple(mirror_axes) if mirror_axes is not None else None,
              "init_args": {"plans": plans, "configuration": configuration, "fold": f,
                            "dataset_json": dataset_json, "device": "cpu"}}
        (dest / f"fold_{f}").mkdir(exist_ok=True)
        save_checkpoint(ck, dest / f"fold_{f}" / "checkpoint_final.pth")
    return dest


def fit_model_folder(model_dir: str | Path, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                     steps: int = 80, batch_size: int = 2, lr: float = 3e-3, seed: int = 0,
                     threads: int | None = 1) -> Path:
    """Briefly train every fold of ``model_dir`` on ``(Z, Y, X)`` HU images already at the model spacing.

    Random-weight U-Nets give spatially white-noise argmax maps, useless for comparing predictors
    after resampling; a few dozen Adam steps on phantom data make the output follow the anatomy.
    Class-balanced cross-entropy (inverse square-root frequency) on the full-resolution head,
    random patches, plans normalisation.

    ``threads``: torch's CPU thread count while training (restored afterwards).  The default 1
    makes the weights a function of the arguments alone: with more threads the sums inside
    convolutions split differently and the weights change with the machine's core count.  None
    keeps the caller's setting (faster on many cores, not reproducible across machines).
    """
    from flareseg.inference.normalize import normalize_
    from flareseg.nnunet.model import load_model

    model_dir = Path(model_dir)
    m = load_model(model_dir)
    patch = m.patch_size
    rng = np.random.default_rng(seed)
    xs = [normalize_(torch.from_numpy(np.asarray(i, dtype=np.float32).copy()), m.normalization_schemes[0],
                     m.intensity_properties[0]) for i in images]
    ys = [torch.from_numpy(np.asarray(lab, dtype=np.int64)) for lab in labels]
    for x in xs:
        if any(s < p for s, p in zip(x.shape, patch)):
            raise ValueError(f"training image {tuple(x.shape)} is smaller than the patch {patch}")
    counts = torch.bincount(torch.cat([y.flatten() for y in ys]), minlength=m.num_classes).double()
    class_weight = (counts.sum() / counts.clamp_min(1)).sqrt().float()
    class_weight /= class_weight.mean()
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _fit(m, model_dir, xs, ys, class_weight, steps, batch_size, lr, seed, rng, patch)
    finally:
        torch.set_num_threads(before)
    return model_dir


def _fit(m, model_dir: Path, xs, ys, class_weight, steps: int, batch_size: int, lr: float, seed: int,
         rng: np.random.Generator, patch) -> None:
    for fold, net in zip(m.folds, m.networks):
        torch.manual_seed(seed)
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            bx, by = [], []
            for _ in range(batch_size):
                k = int(rng.integers(len(xs)))
                st = [int(rng.integers(0, s - p + 1)) for s, p in zip(xs[k].shape, patch)]
                sl = tuple(slice(a, a + p) for a, p in zip(st, patch))
                bx.append(xs[k][sl][None])
                by.append(ys[k][sl])
            loss = torch.nn.functional.cross_entropy(net(torch.stack(bx)), torch.stack(by),
                                                      weight=class_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        path = model_dir / f"fold_{fold}" / m.checkpoint
        ck = load_checkpoint(path)
        ck["network_weights"] = net.eval().state_dict()
        save_checkpoint(ck, path)
