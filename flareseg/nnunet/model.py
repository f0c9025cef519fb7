"""Load a standard nnU-Net v2 model folder for inference (the inference side's only nnunetv2 import).

A model folder holds ``dataset.json``, ``plans.json`` and ``fold_X/checkpoint_*.pth``.  The
network is rebuilt the way ``nnUNetPredictor.initialize_from_trained_model_folder`` does it — the
trainer class named in the checkpoint builds the architecture from the plans with deep supervision
off — but by composition: we call nnU-Net's ``PlansManager``/``ConfigurationManager`` and the
trainer's static ``build_network_architecture`` and keep only what inference needs in
:class:`LoadedModel`.  Axis order of ``patch_size``/``spacing`` is the model's (after the plans'
``transpose_forward``), spacing in mm.
"""
from __future__ import annotations

import inspect
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from flareseg.nnunet.checkpoint import load_checkpoint
from flareseg.nnunet.model_check import check_model_against_checkpoint

log = logging.getLogger(__name__)

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


class ModelFolderError(ValueError):
    """A model folder is incomplete or inconsistent; the message names the path."""


@dataclass
class LoadedModel:
    """Everything inference needs from a model folder (networks on CPU, eval mode)."""

    model_dir: Path
    networks: list[nn.Module]                # one per fold, same architecture
    folds: list[str]
    checkpoint: str
    trainer_name: str
    configuration: str
    patch_size: tuple[int, ...]              # model axis order, voxels
    spacing: tuple[float, ...]               # model axis order, mm
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    intensity_properties: list[dict[str, float]]   # per input channel
    labels: dict[str, int]                   # dataset.json ``labels`` (name -> index)
    num_input_channels: int
    num_classes: int                         # segmentation heads (softmax channels)
    mirror_axes: tuple[int, ...] | None      # allowed for test-time mirroring (spatial axes)
    deep_supervision: bool = False           # networks are built with it off
    file_ending: str = ".nii.gz"
    #: the plans' ``resampling_fn_{data,probabilities}_kwargs`` (order, order_z, force_separate_z)
    resampling_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    plans: dict[str, Any] = field(default_factory=dict, repr=False)
    dataset_json: dict[str, Any] = field(default_factory=dict, repr=False)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing (not an nnU-Net model folder?)")
    with open(path) as f:
        return json.load(f)


def available_folds(model_dir: Path, checkpoint: str | None = None) -> list[str]:
    """Fold names (``"0"``, ``"all"``...) with a checkpoint in ``model_dir``, sorted."""
    names = [checkpoint] if checkpoint else list(CHECKPOINTS)
    folds = [p.name[5:] for p in sorted(Path(model_dir).glob("fold_*"))
             if p.is_dir() and any((p / n).is_file() for n in names)]
    return folds


def _pick_checkpoint(fold_dir: Path, checkpoint: str | None) -> Path:
    names = [checkpoint] if checkpoint else list(CHECKPOINTS)
    for n in names:
        if (fold_dir / n).is_file():
            if n != names[0]:
                log.warning("%s: %s missing, using %s", fold_dir, names[0], n)
            return fold_dir / n
    raise ModelFolderError(f"{fold_dir}: no checkpoint ({', '.join(names)})")


@dataclass(frozen=True)
class PlanView:
    """What inference reads from a model folder's plans.json and dataset.json for one configuration
    (axis order of ``patch_size``/``spacing``: the model's, after ``transpose_forward``)."""

    configuration: dict[str, Any]            # the configuration's own keys (resampling kwargs, ...)
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    arch_class_name: str
    arch_kwargs: dict[str, Any]
    arch_kwargs_req_import: list[str]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    intensity_properties: dict               # per input channel (keys as in the plans)
    num_input_channels: int
    num_classes: int                         # segmentation heads
    has_regions: bool


def plan_view(plans: dict, dataset_json: dict, configuration: str) -> PlanView:
    """The :class:`PlanView` of ``configuration``: read from the JSON directly when the folder is
    plain (a self-contained configuration in today's plans format, nnU-Net's own LabelManager,
    integer labels without an ignore label, no cascade), else through nnU-Net's PlansManager.
    Both give the same view (tests/test_model_load.py); the plain reading spares a predict
    process nnU-Net's plans and label modules, which import image readers, blosc2 and numexpr
    (~0.5 s of a cold start)."""
    conf = plans.get("configurations", {}).get(configuration)
    labels = dataset_json.get("labels") or {}
    plain = (isinstance(conf, dict) and "architecture" in conf and "inherits_from" not in conf
             and conf.get("previous_stage") is None
             and plans.get("label_manager", "LabelManager") == "LabelManager"
             and "foreground_intensity_properties_per_channel" in plans
             and "ignore" not in labels and labels.get("background") == 0
             and all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()))
    if not plain:
        return _nnunet_plan_view(plans, dataset_json, configuration)
    arch = conf["architecture"]
    channels = dataset_json["modality"] if "modality" in dataset_json else dataset_json["channel_names"]
    return PlanView(
        configuration=conf, patch_size=tuple(int(p) for p in conf["patch_size"]),
        spacing=tuple(float(s) for s in conf["spacing"]),
        normalization_schemes=list(conf["normalization_schemes"]), use_mask_for_norm=list(conf["use_mask_for_norm"]),
        arch_class_name=arch["network_class_name"], arch_kwargs=arch["arch_kwargs"],
        arch_kwargs_req_import=list(arch["_kw_requires_import"]),
        transpose_forward=tuple(plans["transpose_forward"]), transpose_backward=tuple(plans["transpose_backward"]),
        intensity_properties=plans["foreground_intensity_properties_per_channel"], num_input_channels=len(channels),
        num_classes=len(set(labels.values())), has_regions=False)


def _nnunet_plan_view(plans: dict, dataset_json: dict, configuration: str) -> PlanView:
    """:class:`PlanView` through nnU-Net's PlansManager / ConfigurationManager / LabelManager."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    lm = pm.get_label_manager(dataset_json)
    return PlanView(
        configuration=cm.configuration, patch_size=tuple(int(p) for p in cm.patch_size),
        spacing=tuple(float(s) for s in cm.spacing),
        normalization_schemes=list(cm.normalization_schemes), use_mask_for_norm=list(cm.use_mask_for_norm),
        arch_class_name=cm.network_arch_class_name, arch_kwargs=cm.network_arch_init_kwargs,
        arch_kwargs_req_import=list(cm.network_arch_init_kwargs_req_import),
        transpose_forward=tuple(pm.transpose_forward), transpose_backward=tuple(pm.transpose_backward),
        intensity_properties=pm.foreground_intensity_properties_per_channel,
        num_input_channels=determine_num_input_channels(pm, cm, dataset_json),
        num_classes=lm.num_segmentation_heads, has_regions=lm.has_regions)


#: trainers that build the network exactly as stock nnUNetTrainer does (from the plans)
PLAIN_ARCHITECTURE_TRAINERS = ("nnUNetTrainer", "FlareSegTrainer")


def trainer_class(trainer_name: str):
    """nnU-Net trainer class by name (the stock one imported directly: the search imports every trainer)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    if trainer_name == "nnUNetTrainer":
        return nnUNetTrainer
    if trainer_name == "FlareSegTrainer":   # ours: no search through every nnU-Net trainer module
        from flareseg.nnunet.trainer import FlareSegTrainer
        return FlareSegTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        return recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError:
        log.warning("trainer %s not found (set nnUNet_extTrainer to its folder); building the "
                    "network from the plans as nnUNetTrainer does", trainer_name)
        return nnUNetTrainer


def build_network(plans: dict, dataset_json: dict, configuration: str,
                  trainer_name: str = "nnUNetTrainer", deep_supervision: bool = False,
                  init: bool = True) -> nn.Module:
    """The architecture the trainer ``trainer_name`` builds for ``configuration`` (random weights).

    ``init=False`` skips the architecture's own weight initialisation (only for the trainers of
    :data:`PLAIN_ARCHITECTURE_TRAINERS`; others build as their trainer does): for a network whose
    weights are loaded next or that only tells shapes.  On torch's ``meta`` device that
    initialisation is what imports ``torch._dynamo`` (~1 s of a fresh process: the meta kernels of
    ``normal_`` are compiled references)."""
    if trainer_name in PLAIN_ARCHITECTURE_TRAINERS:
        # what their (inherited) build_network_architecture does, without importing the trainer
        # module (~2 s of start-up: torch._dynamo, seaborn, ...) in every predict process
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        v = plan_view(plans, dataset_json, configuration)
        return get_network_from_plans(v.arch_class_name, v.arch_kwargs, v.arch_kwargs_req_import,
                                      v.num_input_channels, v.num_classes,
                                      allow_init=init, deep_supervision=deep_supervision)
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    cls = trainer_class(trainer_name)
    if "plans_manager" in inspect.signature(cls.build_network_architecture).parameters:
        return cls.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=deep_supervision)
    return cls.build_network_architecture(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                          cm.network_arch_init_kwargs_req_import, n_in, n_out,
                                          enable_deep_supervision=deep_supervision)


def network_for_check(plans: dict, dataset_json: dict, configuration: str, trainer_name: str) -> nn.Module:
    """The inference network (no deep supervision, no weight initialisation) that
    :mod:`flareseg.nnunet.model_check` compares a checkpoint with (built on the meta device)."""
    return build_network(plans, dataset_json, configuration, trainer_name, deep_supervision=False, init=False)


def with_weights(net: nn.Module, state: Mapping[str, Any], rebuild: Callable[[], nn.Module]) -> nn.Module:
    """``net`` (built on the meta device, its shapes checked against ``state``) holding the
    checkpoint tensors ``state`` as its parameters and buffers, in the network's own dtypes (a
    checkpoint stored in another dtype is cast, as a copying ``load_state_dict`` would), in eval
    mode.  Nothing is initialised or copied: a fresh process skips the random initialisation of a
    network whose weights are replaced anyway (0.6 s for nnU-Net's default 3d_fullres on a CPU).
    Where the state cannot replace every meta tensor (a non-persistent buffer set in the
    network's constructor), ``rebuild()`` builds the network on the CPU and the state is copied in."""
    want = {k: v.dtype for k, v in net.state_dict().items()}
    cast = {k: v.to(want[k]) if k in want and isinstance(v, torch.Tensor) and v.dtype != want[k] else v
            for k, v in state.items()}
    net.load_state_dict(cast, assign=True)
    if any(t.is_meta for t in itertools.chain(net.parameters(), net.buffers())):
        net = rebuild()
        net.load_state_dict(state)
    return net.eval()


def nnunet_image_resampler(model: LoadedModel):
    """The plans' own image resampling function (stock nnU-Net, scipy on the CPU):
    ``fn(data (C, Z, Y, X) numpy, new_shape, current_spacing, new_spacing) -> numpy``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    return PlansManager(model.plans).get_configuration(model.configuration).resampling_fn_data


def load_model(model_dir: str | Path, folds: Sequence[int | str] | None = None,
               checkpoint: str | None = None, trusted: bool = False) -> LoadedModel:
    """Load ``model_dir``; ``folds=None`` uses every fold with a checkpoint.

    ``checkpoint=None`` takes ``checkpoint_final.pth`` and falls back to best, then latest.
    Checkpoints are read with :func:`flareseg.nnunet.checkpoint.load_checkpoint`: weights and the
    numpy allow-list only, unless ``trusted`` (``flareseg predict --trust-model``); a checkpoint
    needing more, or a damaged one, raises :class:`flareseg.io.InputError` naming the file.
    """
    model_dir = Path(model_dir)
    dataset_json = _read_json(model_dir / "dataset.json")
    plans = _read_json(model_dir / "plans.json")
    fold_names = [str(f) for f in folds] if folds is not None else available_folds(model_dir, checkpoint)
    if not fold_names:
        raise ModelFolderError(f"{model_dir}: no fold_*/checkpoint_*.pth found")

    meta, loaded = None, {}
    used_ckpt = ""
    for f in fold_names:
        path = _pick_checkpoint(model_dir / f"fold_{f}", checkpoint)
        used_ckpt = path.name
        ck = load_checkpoint(path, trusted=trusted)
        loaded[path] = ck
        if meta is None:
            meta = ck
    assert meta is not None
    # labels, configuration, trainer and every tensor shape, before any weights are used
    # (InputError); a network the check builds on the meta device is one that gets the weights
    built: dict[tuple[str, str], nn.Module] = {}

    def build_meta(plans_: dict, dataset_: dict, configuration_: str, trainer_: str) -> nn.Module:
        built[trainer_, configuration_] = network_for_check(plans_, dataset_, configuration_, trainer_)
        return built[trainer_, configuration_]

    check_model_against_checkpoint(model_dir, plans, dataset_json, loaded, build_meta)
    states = [ck["network_weights"] for ck in loaded.values()]
    trainer_name = meta["trainer_name"]
    configuration = meta["init_args"]["configuration"]
    del loaded, ck

    view = plan_view(plans, dataset_json, configuration)
    if view.has_regions:
        raise ModelFolderError(f"{model_dir}: region-based models are not supported by the fast predictor")

    def on_cpu() -> nn.Module:
        return build_network(plans, dataset_json, configuration, trainer_name, deep_supervision=False)

    def on_meta() -> nn.Module:
        if (trainer_name, configuration) in built:
            return built.pop((trainer_name, configuration))
        with torch.device("meta"):
            return network_for_check(plans, dataset_json, configuration, trainer_name)

    networks = [with_weights(on_meta(), s, on_cpu) for s in states]

    props = view.intensity_properties
    mirror = meta.get("inference_allowed_mirroring_axes")
    return LoadedModel(
        model_dir=model_dir, networks=networks, folds=fold_names, checkpoint=used_ckpt,
        trainer_name=trainer_name, configuration=configuration,
        patch_size=view.patch_size, spacing=view.spacing,
        transpose_forward=view.transpose_forward, transpose_backward=view.transpose_backward,
        normalization_schemes=view.normalization_schemes, use_mask_for_norm=view.use_mask_for_norm,
        intensity_properties=[props.get(str(c), props.get(c, {})) for c in range(view.num_input_channels)],
        labels={k: int(v) for k, v in dataset_json["labels"].items()},
        num_input_channels=view.num_input_channels, num_classes=view.num_classes,
        mirror_axes=tuple(int(a) for a in mirror) if mirror is not None else None,
        file_ending=dataset_json.get("file_ending", ".nii.gz"), plans=plans, dataset_json=dataset_json,
        resampling_kwargs={k: dict(view.configuration.get(f"resampling_fn_{k}_kwargs") or {})
                           for k in ("data", "probabilities")})
