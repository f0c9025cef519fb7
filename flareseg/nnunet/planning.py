"""Fingerprint, plan and preprocess with nnU-Net, adding our *fine* and *coarse* configurations.

nnU-Net's planner does the fingerprint-driven parts (normalisation, resampling functions, the
default configurations); we add one configuration per :class:`flareseg.config.PlanConfig` with the
spacing, patch size and batch size from our config, and a U-Net topology derived for that patch
with nnU-Net's own ``get_pool_and_conv_props``.  Spacing and patch are (z, y, x); we plan without
axis transposition so plans and config use the same order.
"""
from __future__ import annotations

import logging
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING

from flareseg.config import PlanConfig
from flareseg.io import read_json, write_json

if TYPE_CHECKING:
    import numpy

log = logging.getLogger(__name__)

PLANS_NAME = "nnUNetPlans"


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
    arch = plan["architecture"]["arch_kwargs"]
    arch.update({
        "n_stages": n,
        "features_per_stage": [min(pc.features_max, pc.features_base * 2 ** i) for i in range(n)],
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in strides],
        "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1),
    })
    plan.update({"data_identifier": data_identifier, "patch_size": patch,
                 "spacing": [float(s) for s in pc.spacing], "batch_size": int(pc.batch_size)})
    return plan


def plan_and_preprocess(dataset_id: int, configs: dict[str, PlanConfig], num_processes: int = 2,
                        preprocess: bool = True) -> Path:
    """Fingerprint + plans (with our configurations) + preprocessing of ``configs``' names.

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
    plans = planner.plan_experiment()
    base = plans["configurations"]["3d_fullres"]
    for cname, pc in configs.items():
        plans["configurations"][cname] = configuration_plan(base, pc, f"{PLANS_NAME}_{cname}")
    plans_file = Path(str(nnUNet_preprocessed)) / name / f"{PLANS_NAME}.json"
    write_json(plans, plans_file)
    if preprocess:
        preprocess_dataset(dataset_id, PLANS_NAME, tuple(configs), [num_processes] * len(configs),
                           verbose=False, show_progress_bar=True)
    return plans_file


def add_configuration(plans_file: Path, name: str, pc: PlanConfig) -> None:
    """Add/replace one of our configurations in an existing plans file (e.g. after a config change)."""
    plans = read_json(plans_file)
    plans["configurations"][name] = configuration_plan(plans["configurations"]["3d_fullres"], pc,
                                                       f"{PLANS_NAME}_{name}")
    write_json(plans, plans_file)


def preprocess(dataset_id: int, configurations: tuple[str, ...], num_processes: int = 2) -> None:
    """Preprocess a dataset whose plans are already in place (e.g. reused from another dataset)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    preprocess_dataset(dataset_id, PLANS_NAME, configurations, [num_processes] * len(configurations),
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
