"""Fingerprint, plan and preprocess with nnU-Net, adding our *fine* and *coarse* configurations.

nnU-Net's planner does the fingerprint-driven parts (normalisation, resampling functions, the
default configurations); we add one configuration per :class:`flareseg.config.PlanConfig` with the
spacing, patch size and batch size from our config, and a U-Net topology derived for that patch
with nnU-Net's own ``get_pool_and_conv_props``.  Spacing and patch are (z, y, x); we plan without
axis transposition so plans and config use the same order.

``PlanConfig.architecture`` picks the network class: ``plain`` (nnU-Net's default PlainConvUNet) or
``resenc`` (the ResidualEncoderUNet of nnU-Net v2's ResEnc M/L/XL presets, whose encoder blocks per
stage are copied from ``ResEncUNetPlanner``; the three presets differ only in the patch size their
GPU-memory target buys, so at a given patch they are one network).  :func:`network_size` measures a
planned configuration (parameters, and the multiply-accumulates of one patch counted from layer
shapes on PyTorch's meta device, so nothing is computed).
"""
from __future__ import annotations

import logging
import os
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flareseg.config import PlanConfig
from flareseg.io import write_json, write_text
from flareseg.labels import NUM_CLASSES
from flareseg.nnunet.env import PLANS_NAME, plans_file, preprocessed_dataset, raw_dataset

if TYPE_CHECKING:
    import numpy

log = logging.getLogger(__name__)

#: case -> annotated classes; written by the import into the raw dataset and read by the trainer
#: from next to the plans (``preprocessed_dataset_folder_base``)
LABEL_TYPES_FILE = "label_types.json"

#: network class (nnU-Net plans' ``network_class_name``) of each ``PlanConfig.architecture``
ARCHITECTURES = {
    "plain": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "resenc": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
#: residual blocks per encoder stage and convs per decoder stage of nnU-Net v2's ResEnc presets
#: (``ResEncUNetPlanner.UNet_blocks_per_stage_encoder`` / ``_decoder``, nnunetv2 2.4-2.8)
RESENC_BLOCKS_ENCODER = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
RESENC_CONVS_DECODER = 1
#: convs per stage (encoder and decoder) of nnU-Net's default PlainConvUNet
PLAIN_CONVS = 2


def configuration_plan(base: dict, pc: PlanConfig, data_identifier: str) -> dict:
    """A configuration dict (nnU-Net plans format) for ``pc``, starting from nnU-Net's 3d_fullres
    plan ``base`` (normalisation/resampling settings) and re-deriving the network topology."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, patch, _ = get_pool_and_conv_props(list(pc.spacing), list(pc.patch_size), 4, 999999)
    patch = [int(p) for p in patch]
    if patch != list(pc.patch_size):
        log.warning("patch size %s adjusted to %s to be divisible by the network's pooling", pc.patch_size, patch)
    n = len(strides)
    plan = deepcopy(base)
    plan["architecture"]["network_class_name"] = ARCHITECTURES[pc.architecture]
    arch = plan["architecture"]["arch_kwargs"]
    arch.update({
        "n_stages": n,
        "features_per_stage": [min(pc.features_max, pc.features_base * 2 ** i) for i in range(n)],
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in strides],
    })
    arch.pop("n_conv_per_stage", None)
    arch.pop("n_blocks_per_stage", None)
    if pc.architecture == "resenc":
        blocks = list(RESENC_BLOCKS_ENCODER[:n]) + [RESENC_BLOCKS_ENCODER[-1]] * max(0, n - len(RESENC_BLOCKS_ENCODER))
        arch.update({"n_blocks_per_stage": blocks, "n_conv_per_stage_decoder": [RESENC_CONVS_DECODER] * (n - 1)})
    else:
        arch.update({"n_conv_per_stage": [PLAIN_CONVS] * n, "n_conv_per_stage_decoder": [PLAIN_CONVS] * (n - 1)})
    plan.update({"data_identifier": data_identifier, "patch_size": patch,
                 "spacing": [float(s) for s in pc.spacing], "batch_size": int(pc.batch_size)})
    return plan


@dataclass(frozen=True)
class NetworkSize:
    """Size of the network of one configuration: ``parameters`` (all trainable tensors, deep
    supervision heads included) and ``macs``, the multiply-accumulates of the convolutions and
    transposed convolutions for one input patch (batch 1; biases, normalisation and nonlinearities
    are not counted, as in PyTorch's, fvcore's and thop's counters)."""
    network_class: str
    n_stages: int
    patch_size: tuple[int, ...]
    parameters: int
    macs: int

    @property
    def gflops(self) -> float:
        """GFLOPs of one patch at 2 FLOPs per multiply-accumulate."""
        return 2 * self.macs / 1e9

    def describe(self) -> str:
        return (f"{self.network_class.rsplit('.', 1)[-1]}, {self.n_stages} stages, "
                f"{self.parameters / 1e6:.2f} M parameters, {self.macs / 1e9:.1f} GMACs "
                f"({self.gflops:.0f} GFLOPs) per {'x'.join(map(str, self.patch_size))} patch")


def network_size(conf: dict, num_classes: int, input_channels: int = 1) -> NetworkSize:
    """Measure the network of configuration ``conf`` (a plans configuration dict, e.g. from
    :func:`configuration_plan`) with ``num_classes`` outputs: the network is built on PyTorch's
    meta device (shapes only: no memory, no arithmetic) and one patch is passed through it under
    ``torch.utils.flop_counter.FlopCounterMode``, which counts each (transposed) convolution from its
    shapes at 2 FLOPs per multiply-accumulate."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from torch.utils.flop_counter import FlopCounterMode

    a = conf["architecture"]
    with torch.device("meta"):
        net = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"],
                                     input_channels, num_classes, allow_init=False, deep_supervision=True)
    params = sum(p.numel() for p in net.parameters())
    patch = tuple(int(p) for p in conf["patch_size"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.empty((1, input_channels, *patch), device="meta"))
    return NetworkSize(a["network_class_name"], int(a["arch_kwargs"]["n_stages"]), patch, int(params),
                       int(counter.get_total_flops()) // 2)


def _log_size(name: str, conf: dict, num_classes: int) -> None:
    try:
        log.info("%s network: %s", name, network_size(conf, num_classes).describe())
    except Exception as e:  # measuring is informative only; planning does not depend on it
        log.warning("%s network: size not measured (%s)", name, e)


def plan_and_preprocess(dataset_id: int, configs: dict[str, PlanConfig], num_processes: int = 2,
                        preprocess: bool | tuple[str, ...] = True) -> Path:
    """Fingerprint + plans (with our configurations) + preprocessing of ``configs``' names
    (``preprocess``: all of them, none, or the names given).

    nnU-Net's folders must already be exported (:class:`flareseg.nnunet.env.NNUNetPaths`).
    Returns the plans file.
    """
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      preprocess_dataset)
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    name = convert_id_to_dataset_name(dataset_id)
    extract_fingerprint_dataset(dataset_id, num_processes=num_processes, clean=True, verbose=False,
                                show_progress_bar=True)
    planner = ExperimentPlanner(dataset_id, plans_name=PLANS_NAME, suppress_transpose=True)
    # nnU-Net's planner sets torch's thread count to nnUNet_n_proc_DA while it sizes the network;
    # "0" (load data in the main process, a valid training setting) would crash it
    n_da = os.environ.get("nnUNet_n_proc_DA")
    if n_da is not None and n_da.strip() in ("0", "-0"):
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        plans = planner.plan_experiment()
    finally:
        if n_da is not None:
            os.environ["nnUNet_n_proc_DA"] = n_da
    base = plans["configurations"]["3d_fullres"]
    n_classes = len(planner.dataset_json.get("labels", {})) or NUM_CLASSES
    for cname, pc in configs.items():
        plans["configurations"][cname] = configuration_plan(base, pc, f"{PLANS_NAME}_{cname}")
        _log_size(cname, plans["configurations"][cname], n_classes)
    pf = plans_file(preprocessed_dataset(Path(str(nnUNet_preprocessed)), name))
    write_json(plans, pf)
    names = tuple(configs) if preprocess is True else tuple(preprocess or ())
    if names:
        n = _workers(name, [plans["configurations"][c]["spacing"] for c in names], num_processes)
        preprocess_dataset(dataset_id, PLANS_NAME, names, [n] * len(names),
                           verbose=False, show_progress_bar=True)
    return pf


def place_label_types(raw_dataset: Path, preprocessed_dataset: Path) -> Path:
    """Copy the raw dataset's ``label_types.json`` next to the plans, where the trainer reads it.

    The copy goes through a temporary file renamed into place, so a kill never leaves half a
    JSON behind.  Returns the copy's path.
    """
    dest = Path(preprocessed_dataset) / LABEL_TYPES_FILE
    write_text((Path(raw_dataset) / LABEL_TYPES_FILE).read_text(), dest)
    return dest


def _workers(dataset_name: str, spacings: list, requested: int) -> int:
    """Preprocessing workers: ``requested`` bounded by memory
    (:mod:`flareseg.nnunet.preprocess_memory`; ``FLARESEG_PREPROCESS_WORKERS`` fixes the count)."""
    from nnunetv2.paths import nnUNet_raw
    from flareseg.nnunet.preprocess_memory import dataset_workers, env_workers
    fixed = env_workers()
    if fixed is not None:
        return max(1, fixed)
    return dataset_workers(raw_dataset(Path(str(nnUNet_raw)), dataset_name), spacings, requested)


def preprocess(dataset_id: int, configurations: tuple[str, ...], num_processes: int = 2) -> None:
    """Preprocess a dataset whose plans are already in place (e.g. reused from another dataset),
    with ``num_processes`` workers bounded by memory."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from flareseg.io import read_json
    name = convert_id_to_dataset_name(dataset_id)
    plans = read_json(plans_file(preprocessed_dataset(Path(str(nnUNet_preprocessed)), name)))
    n = _workers(name, [plans["configurations"][c]["spacing"] for c in configurations], num_processes)
    preprocess_dataset(dataset_id, PLANS_NAME, configurations, [n] * len(configurations),
                       verbose=False, show_progress_bar=True)


def load_preprocessed(folder: Path, keys: list[str]) -> list[tuple[str, "numpy.ndarray", "numpy.ndarray"]]:
    """``(key, image (C, Z, Y, X), seg (1, Z, Y, X))`` of preprocessed cases (QC pictures, tests)."""
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    ds = infer_dataset_class(str(folder))(str(folder), keys)
    out = []
    for k in keys:
        data, seg, _, _ = ds.load_case(k)
        out.append((k, np.asarray(data[:]), np.asarray(seg[:])))
    return out
