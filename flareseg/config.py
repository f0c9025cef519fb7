"""YAML configuration -> frozen dataclasses.

Loading starts from the dataclass defaults (the paper's settings, also written out in
``configs/default.yaml``) and merges one YAML file plus ``--set a.b=value`` overrides.  Unknown
keys, wrong types and out-of-range numbers (the ``RANGES`` table) raise :class:`ConfigError`
naming the key, the value, the allowed range and the file.  ``resolved()`` gives
the plain dict that every stage writes next to its outputs, ``config_hash()`` its digest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from flareseg.errors import ConfigError, clip, short_repr
from flareseg.yaml_read import parse_yaml, read_yaml


@dataclass(frozen=True)
class PhantomConfig:
    """Synthetic partially labeled abdominal phantoms (the embedded default data)."""
    labeled: int = 24          # cases with some organ groups (+- tumor) annotated
    tumor_only: int = 6        # cases with only tumor annotated
    unlabeled: int = 24        # cases with no labels
    validation: int = 6        # held-out cases with full ground truth
    seed: int = 0
    size_xy: tuple[int, int] = (160, 192)   # in-plane array size range (voxels)
    inplane_spacing: tuple[float, float] = (0.6, 1.0)   # mm
    slice_spacing: tuple[float, float] = (1.0, 5.0)     # mm
    extent_z_mm: tuple[float, float] = (160.0, 240.0)   # scanned length along z
    z_margin_mm: float = 0.0   # body scanned above and below the abdominal organs (chest/pelvis stand-in)
    # simple: the body scaled to fill the field of view (small, fast test phantoms); adult: adult-size
    # anatomy with chest (lungs, heart) and pelvis, published HU per phase, CT noise and partial volume
    anatomy: Literal["simple", "adult"] = "simple"
    # relative weights of the labeled pool's partial-label groups (flareseg/data/phantoms.py
    # LABELED_GROUPS: all_organs_tumor, all_organs, liver_tumor, kidneys_tumor, pancreas_tumor);
    # null = the FLARE23-like mix.  Groups left out or at 0 are not drawn; each drawn group appears
    # once before the rest are drawn by weight.  {all_organs_tumor: 1}: every labeled case fully labeled
    group_weights: Optional[dict[str, float]] = None


@dataclass(frozen=True)
class DataConfig:
    """Where the raw data come from and which nnU-Net dataset they become."""
    source: Literal["phantoms", "folders"] = "phantoms"
    labeled_images: Optional[str] = None     # folder of labeled images (FLARE layout)
    labels: Optional[str] = None             # folder of their label maps
    unlabeled_images: Optional[str] = None   # folder of unlabeled images
    manifest: Optional[str] = None           # CSV case_id,annotated or the authors' case_to_partial_type.json
    label_types: Optional[str] = None        # per-case type overrides (CSV/JSON), only the cases listed
    validation_images: Optional[str] = None  # held-out images with full labels (evaluation)
    validation_labels: Optional[str] = None
    dataset_id: int = 823
    dataset_name: str = "FLARE23Partial"
    phantoms: PhantomConfig = field(default_factory=PhantomConfig)
    num_processes: int = 2
    # import writes every case in one orientation (LPS ascending, permuted and flipped, nothing
    # resampled) so left and right are the same array side in every training case; predict does the
    # same (inference.reorient).  false: keep each case's stored orientation (stock nnU-Net)
    reorient: bool = True


@dataclass(frozen=True)
class PlanConfig:
    """nnU-Net plans for one configuration (fine or coarse)."""
    spacing: tuple[float, float, float] = (2.5, 0.82, 0.82)   # (z, y, x) mm
    patch_size: tuple[int, int, int] = (32, 192, 192)         # (z, y, x) voxels
    batch_size: int = 4
    features_base: int = 32          # U-Net features at the first stage (doubles per stage)
    features_max: int = 320          # cap on features per stage
    # plain: nnU-Net's default PlainConvUNet (2 convs per stage); resenc: nnU-Net v2's residual
    # encoder U-Net of the ResEnc M/L/XL presets (1,3,4,6,6,6.. blocks; the presets differ only in patch)
    architecture: Literal["plain", "resenc"] = "plain"


@dataclass(frozen=True)
class ElasticConfig:
    """Elastic deformation inside nnU-Net's spatial transform (batchgeneratorsv2 ``SpatialTransform``;
    nnU-Net 2.8.1's stock trainer sets ``p_elastic_deform=0``).  Defaults: nnU-Net v1's elastic
    settings (p 0.2, sigma 9-13 voxels; its alpha 0-900 moves voxels by up to 5-9 voxels at those
    sigmas), the paper naming elastic deformation without numbers."""
    probability: float = 0.2                          # per sample; 0 = off (nnU-Net 2.8.1 stock)
    sigma: tuple[float, float] = (9.0, 13.0)          # smoothing of the displacement field, voxels
    magnitude: tuple[float, float] = (0.0, 6.0)       # largest displacement per axis, voxels


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters for one model (the trainer reads these, not its __init__)."""
    epochs: int = 1200
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    optimizer: Literal["sgd", "adamw"] = "sgd"   # sgd: nnU-Net's SGD; adamw: faster start on tiny CPU budgets
    lr: float = 0.01
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    oversample_foreground: float = 0.7
    loss: Literal["merge_max", "released", "marginal", "naive"] = "merge_max"
    type_sampling: Literal["proportional", "uniform"] = "proportional"
    deep_supervision: bool = True
    num_workers: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fold: int = 0
    save_every: int = 50             # epochs between checkpoint_latest saves (resume granularity)
    seed: int = 0                    # seeds weights, sampling and augmentation (exact with num_workers 0)
    final_validation: bool = False   # nnU-Net's full-volume validation after training (slow)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)   # the paper's elastic deformation
    # orientation augmentation; None = nnU-Net's: mirroring along every axis, in-plane rotation up to
    # 180 deg for anisotropic patches (else 30 deg about every axis).  [] / a small angle keep left and
    # right apart (left/right kidney, spleen vs liver) on canonically oriented data (data.reorient),
    # as TotalSegmentator trains (nnUNetTrainerNoMirroring)
    mirror_axes: Optional[tuple[int, ...]] = None    # preprocessed array axes (0 = z) to mirror
    max_rotation_deg: Optional[float] = None
    compile: bool = True             # torch.compile the network on CUDA, as nnU-Net 2.8.1 does (never on CPU)
    # scale-out (docs/scale.md): processes per node and nodes of a torchrun launch; 1 x 1 = one process
    gpus: int = 1
    nodes: int = 1
    rendezvous: str = ""             # host:port of the torchrun rendezvous for nodes > 1 ("" = single node)
    # minutes a training collective (DDP all-reduce) waits before the run fails, so a dead rank frees
    # the GPUs; fractions allowed.  The control group (ranks waiting for rank 0's preprocessing) keeps 24 h
    dist_timeout_min: float = 30.0


@dataclass(frozen=True)
class PseudoLabelConfig:
    k_organ: float = 1000        # keep this many (or fraction if < 1) most organ-confident cases
    k_tumor: float = 100         # of those, keep tumor labels in the K2 least tumor-uncertain
    score: Literal["entropy", "disagreement", "inconsistency"] = "entropy"
    unselected_tumor: Literal["unannotated", "background"] = "unannotated"
    tta: bool = False
    fill_in_organs: bool = True      # fill organ labels into tumor-only cases (feeds the CTO pool)
    fill_in_partial: bool = False    # also complete cases with only some organs annotated
    shard: str = "0/1"               # i/N: this run scores only its share of the unlabeled cases
    # extra uncertainty members (any of them: scoring at the input grid, multi-member scores)
    member_models: tuple[str, ...] = ()       # nnU-Net model folders, each optionally "<folder>@<checkpoint>"
    member_tta: bool = False                  # the fine model on the left-right mirrored scan
    member_label_dirs: tuple[str, ...] = ()   # folders of label maps <case_id>.nii.gz (other teams')
    # per member_label_dirs entry, the scores it counts for; () = "organ" for every folder (external
    # algorithms' organ-only labels: they never count for the tumor score)
    member_label_groups: tuple[Literal["organ", "organ+tumor"], ...] = ()
    tumor_score: Optional[Literal["entropy", "disagreement", "inconsistency"]] = None   # None: = score


@dataclass(frozen=True)
class CTOConfig:
    margin_z: tuple[int, int] = (8, 16)      # voxels at the coarse spacing, drawn uniformly per side
    margin_xy: tuple[int, int] = (24, 32)
    # the coarse patch (z, y, x) the margins above are given for (the paper's); the pool scales
    # them by coarse.patch_size / margin_patch per axis, so the context fills the same fraction of
    # any patch (the demo's 16x48x48 gets z 4-8 / xy 6-8); null: margins are taken as they are
    margin_patch: Optional[tuple[int, int, int]] = (32, 192, 192)
    connectivity: Literal[6, 18, 26] = 26
    min_voxels: int = 10                     # on top of the cleaning rules stage-3 applies first
    max_extent_fraction: float = 1.0         # of the coarse patch, per axis
    exclude_outside_abdomen: bool = True
    abdomen_margin_mm: float = 20.0
    seed: int = 0


@dataclass(frozen=True)
class CutMixConfig:
    probability: float = 1.0
    max_objects: int = 1
    abdomen_margin_mm: float = 10.0


@dataclass(frozen=True)
class CleaningConfig:
    min_voxels: int = 100
    connectivity: Literal[6, 18, 26] = 26
    abdomen_margin_mm: float = 20.0
    max_organ_distance_mm: float = 20.0
    remove_outside_abdomen: bool = True
    remove_far_from_organs: bool = True


#: image resampling to the model spacing: the device B-spline (stock's, the default), trilinear,
#: or nnU-Net's own function on the CPU
ImageResampling = Literal["bspline", "linear", "nnunet"]
IMAGE_RESAMPLING: tuple[str, ...] = typing.get_args(ImageResampling)

#: what runs the network: the choices of inference.runtime, each an entry of the runtime table
#: (flareseg.inference.runtimes, which must name exactly these)
Runtime = Literal["torch", "openvino"]
RUNTIMES: tuple[str, ...] = typing.get_args(Runtime)


@dataclass(frozen=True)
class InferenceConfig:
    skip_windows: bool = True
    skip_threshold: int = 1          # foreground voxels in indicator windows needed to keep a plane
    skip_grow: bool = True           # also run skipped planes next to predicted foreground
    step_size: float = 0.5
    tta: bool = False
    batch_windows: int = 0           # windows per network call; 0 = auto: 4 on CUDA, 1 on a CPU
    # auto: float16 autocast on CUDA, bfloat16 autocast on CPUs with native bf16 (AMX/AVX512-BF16),
    # else float32; float16 on a CPU runs float32 (see flareseg.inference.predictor.choose_dtype)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    crop_to_body: bool = True
    reorient: bool = True            # permute and flip the array to axial LPS ascending (data.reorient), restore after
    image_resampling: ImageResampling = "bspline"  # to the model spacing (see docs)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch: the network runs in torch; openvino: in OpenVINO on the CPU (optional extra, ~2x faster
    # float32 there; see flareseg.inference.openvino_runtime); device auto then means the CPU
    runtime: Runtime = "torch"
    # CUDA: cudnn.benchmark off and deterministic algorithms, so every process (and every number of
    # GPUs) gives the same output; stage-2 always runs so (its selection must not depend on the GPUs)
    deterministic: bool = False


@dataclass(frozen=True)
class EvaluationConfig:
    nsd_tolerance_mm: dict[int, float] = field(default_factory=lambda: {
        1: 5.0, 2: 3.0, 3: 3.0, 4: 5.0, 5: 2.0, 6: 2.0, 7: 2.0, 8: 2.0, 9: 2.0,
        10: 3.0, 11: 5.0, 12: 7.0, 13: 3.0, 14: 2.0})
    z_range_classes: tuple[int, ...] = (5, 6, 10)
    nsd_min_dsc: float = 0.1   # the 2023 challenge script; its current version (2024) uses 0.2
    # flareseg: z-range inclusive, own surfel table, prediction must be on the reference grid;
    # flare23-official: the official script's numbers exactly (docs/evaluation.md)
    rules: Literal["flareseg", "flare23-official"] = "flareseg"
    # one more scan with labels outside the validation set (e.g. a real CT for a phantom-trained
    # model): stage-6 predicts it with the shipped model and the closing table lists its DSC per
    # class; a path that does not exist is reported and skipped (relative paths: from the current folder)
    external_image: Optional[str] = None
    external_labels: Optional[str] = None


@dataclass(frozen=True)
class Config:
    seed: int = 12345
    work_dir: str = "work"
    data: DataConfig = field(default_factory=DataConfig)
    fine: PlanConfig = field(default_factory=PlanConfig)
    coarse: PlanConfig = field(default_factory=lambda: PlanConfig(spacing=(2.5, 1.5, 1.5)))
    train_fine: TrainConfig = field(default_factory=TrainConfig)
    train_coarse: TrainConfig = field(default_factory=TrainConfig)
    pseudolabel: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    cto: CTOConfig = field(default_factory=CTOConfig)
    cutmix: CutMixConfig = field(default_factory=CutMixConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# --------------------------------------------------------------------------- allowed ranges

@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key: ``lo``/``hi`` bounds (None: unbounded), open or closed.

    For a list-valued key every element must lie in the range; ``ordered`` also asks for
    ``lo <= hi`` between the two elements of a ``[lo, hi]`` pair.  For a mapping the values are
    checked, and ``keys`` (a Range) checks the keys.  Floats must be finite.
    """
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    ordered: bool = False
    keys: Optional["Range"] = None

    def contains(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def describe(self) -> str:
        def num(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"
        if self.lo is not None and self.hi is not None:
            s = f"in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            s = f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        elif self.hi is not None:
            s = f"{'<' if self.hi_open else '<='} {num(self.hi)}"
        else:
            s = "finite"
        return s + (" with lo <= hi" if self.ordered else "")


#: the most phantom cases of one kind (labeled, tumor-only, unlabeled, validation) one run writes
MAX_PHANTOMS = 10_000
#: the largest seed (numpy and torch both accept 0 .. 2**32 - 1)
MAX_SEED = 2**32 - 1

_COUNT = Range(0)            # a count that may be 0
_POSITIVE_INT = Range(1)     # at least one
_NON_NEGATIVE_INT = Range(0)
_POSITIVE = Range(0, lo_open=True)
_NON_NEGATIVE = Range(0)
_FRACTION = Range(0, 1)      # a probability or a share
_SEED = Range(0, MAX_SEED)
_CLASS = Range(1, 14)        # a FLARE23 foreground class (flareseg.labels.FOREGROUND)

#: allowed range of every numeric key, per config dataclass and field (tests/test_config.py checks
#: that no int/float field is missing here).  Cross-field orders live in ``ORDERED_FIELDS``.
RANGES: dict[str, dict[str, Range]] = {
    "PhantomConfig": {
        "labeled": Range(0, MAX_PHANTOMS), "tumor_only": Range(0, MAX_PHANTOMS),
        "unlabeled": Range(0, MAX_PHANTOMS), "validation": Range(0, MAX_PHANTOMS),
        "seed": _SEED,
        "size_xy": Range(16, 2048, ordered=True),              # the generator needs >= 16 voxels
        "inplane_spacing": Range(0, 20, lo_open=True, ordered=True),
        "slice_spacing": Range(0, 50, lo_open=True, ordered=True),
        "extent_z_mm": Range(0, 2000, lo_open=True, ordered=True),
        "z_margin_mm": Range(0, 1000),
        "group_weights": Range(0, 1e6),
    },
    "DataConfig": {
        "dataset_id": Range(1, 998),     # nnU-Net ids have 3 digits; stage-5 uses dataset_id + 1
        "num_processes": Range(1, 512),
    },
    "PlanConfig": {
        "spacing": Range(0, 50, lo_open=True),
        "patch_size": Range(4, 1024),
        "batch_size": _POSITIVE_INT,
        "features_base": _POSITIVE_INT,
        "features_max": _POSITIVE_INT,
    },
    "TrainConfig": {
        "epochs": _POSITIVE_INT, "iterations_per_epoch": _POSITIVE_INT, "val_iterations": _POSITIVE_INT,
        "lr": Range(0, 10, lo_open=True),
        "momentum": Range(0, 1, hi_open=True),
        "weight_decay": _NON_NEGATIVE,
        "poly_exponent": _NON_NEGATIVE,
        "oversample_foreground": _FRACTION,
        "num_workers": Range(0, 512),
        "fold": _COUNT,
        "save_every": _POSITIVE_INT,
        "seed": _SEED,
        "gpus": Range(1, 1024), "nodes": Range(1, 4096),
        "dist_timeout_min": Range(0, 7 * 24 * 60, lo_open=True),
        "mirror_axes": Range(0, 2), "max_rotation_deg": Range(0, 180),
    },
    "ElasticConfig": {
        "probability": _FRACTION,
        "sigma": Range(0, 1000, lo_open=True, ordered=True),
        "magnitude": Range(0, 1000, ordered=True),
    },
    "PseudoLabelConfig": {
        "k_organ": _NON_NEGATIVE,    # a count (>= 1) or a fraction (< 1) of the cases
        "k_tumor": _NON_NEGATIVE,
    },
    "CTOConfig": {
        "margin_z": Range(0, 256, ordered=True), "margin_xy": Range(0, 256, ordered=True),
        "margin_patch": Range(1, 4096),
        "min_voxels": _POSITIVE_INT,
        "max_extent_fraction": Range(0, 1, lo_open=True),
        "abdomen_margin_mm": _NON_NEGATIVE,
        "seed": _SEED,
    },
    "CutMixConfig": {
        "probability": _FRACTION,
        "max_objects": Range(1, 100),
        "abdomen_margin_mm": _NON_NEGATIVE,
    },
    "CleaningConfig": {
        "min_voxels": _COUNT,        # 0 or 1: nothing removed for size
        "abdomen_margin_mm": _NON_NEGATIVE,
        "max_organ_distance_mm": _NON_NEGATIVE,
    },
    "InferenceConfig": {
        "skip_threshold": _POSITIVE_INT,
        "step_size": Range(0, 1, lo_open=True),
        "batch_windows": _NON_NEGATIVE_INT,   # 0: auto
    },
    "EvaluationConfig": {
        "nsd_tolerance_mm": Range(0, 100, keys=_CLASS),
        "z_range_classes": _CLASS,
        "nsd_min_dsc": _FRACTION,
    },
    "Config": {
        "seed": _SEED,
    },
}

#: pairs of fields of one dataclass that must satisfy ``first <= second``
ORDERED_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "PlanConfig": (("features_base", "features_max"),),
}


def range_of(cls: type, name: str) -> Range | None:
    """The declared :class:`Range` of field ``name`` of config dataclass ``cls`` (None if none)."""
    return RANGES.get(cls.__name__, {}).get(name)


def out_of_range(cls: type, name: str, value: Any) -> str | None:
    """Why ``value`` is not allowed for field ``name`` of ``cls`` ("expected ..."), or None."""
    r = range_of(cls, name)
    if r is None or value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if r.keys is not None and not r.keys.contains(k):
                return f"keys {r.keys.describe()}"
            if not r.contains(v):
                return f"values {r.describe()}"
        return None
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (int, float)) and not r.contains(v) for v in value):
            return ("every element " if len(value) != 2 or not r.ordered else "") + r.describe()
        if r.ordered and len(value) == 2 and value[0] > value[1]:
            return r.describe()
        return None
    return None if r.contains(value) else r.describe()


def check_value(cls: type, name: str, value: Any, key: str, src: str) -> None:
    """Raise :class:`ConfigError` when ``value`` is outside the declared range of ``cls.name``;
    the message names ``src`` (file or option), ``key``, the value and the allowed range."""
    why = out_of_range(cls, name, value)
    if why is not None:
        raise ConfigError(f"{src}: key '{key}' = {short_repr(to_dict(value))} is out of range (expected {why})")


def validate(cfg: Any, src: str = "<config>", prefix: str = "") -> None:
    """Check every numeric field of a config dataclass (recursively) against ``RANGES``."""
    cls = type(cfg)
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            validate(v, src, f"{prefix}{f.name}.")
        else:
            check_value(cls, f.name, v, prefix + f.name, src)
    for a, b in ORDERED_FIELDS.get(cls.__name__, ()):
        if getattr(cfg, a) > getattr(cfg, b):
            raise ConfigError(f"{src}: key '{prefix}{a}' = {short_repr(getattr(cfg, a))} is out of range "
                              f"(expected <= {prefix}{b} = {short_repr(getattr(cfg, b))})")
    if isinstance(cfg, Config):
        mirror = cfg.train_fine.mirror_axes
        if cfg.pseudolabel.member_tta and mirror is not None and 2 not in mirror:
            # the mirrored scan's left/right classes would come back swapped: every case disagrees
            raise ConfigError(f"{src}: key 'pseudolabel.member_tta' scores the fine model on the left-right "
                              f"mirrored scan, but 'train_fine.mirror_axes' = {list(mirror)} never mirrors "
                              "left-right (axis 2), so the model tells left from right by side: add 2 to "
                              "train_fine.mirror_axes or set member_tta false")


# --------------------------------------------------------------------------- loading

def _coerce(value: Any, tp: Any, key: str, src: str) -> Any:
    """Check/convert ``value`` to type ``tp``; raise ConfigError naming ``key`` and ``src``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def bad(expect: str) -> ConfigError:
        return ConfigError(f"{src}: key '{clip(key)}' expects {expect}, got {short_repr(value)} "
                           f"({type(value).__name__})")

    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad("a mapping")
        return _build(tp, value, src, key + ".")
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, src)
    if origin is Literal:
        if value not in args:
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", src) for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{key}[{i}]", src) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        kt, vt = args
        if kt is int:   # JSON (resolved configs) stores integer keys as strings
            try:
                value = {int(k) if isinstance(k, str) else k: v for k, v in value.items()}
            except ValueError:
                raise bad("a mapping with integer keys") from None
        return {_coerce(k, kt, f"{key}.{k}", src): _coerce(v, vt, f"{key}.{k}", src)
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true/false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise ConfigError(f"{src}: key '{key}' has unsupported type {tp}")  # pragma: no cover


def _build(cls: type, data: dict, src: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{src}: unknown key '{clip(prefix + str(unknown[0]))}' "
                          f"(valid keys under '{prefix or '<top>'}': {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k, src) for k, v in data.items()}
    for k, v in kwargs.items():
        check_value(cls, k, v, prefix + k, src)
    return cls(**kwargs)


def _deep_merge(base: dict, over: dict, cls: type = None) -> dict:
    """Merge ``over`` into ``base`` section by section (dataclass fields of ``cls``); any other
    value, a mapping-typed key such as ``nsd_tolerance_mm`` included, is replaced whole."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for k, v in over.items():
        sub = hints.get(k)
        if dataclasses.is_dataclass(sub) and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v, sub)
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> Any:
    """Plain (JSON/YAML-able) dict of a config dataclass; tuples become lists."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set: expected key=value, got {short_repr(item)}")
    k, v = item.split("=", 1)
    k = k.strip()
    if not k:
        raise ConfigError(f"--set: empty key in {short_repr(item)}")
    return k.split("."), parse_yaml(v, f"--set {clip(item)}")


def load_config(path: os.PathLike | str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config over the defaults and apply ``key=value`` overrides.  The file is read
    by :func:`flareseg.yaml_read.read_yaml` (duplicate keys, alias bombs and non-files refused);
    every problem is a one-line :class:`ConfigError` naming the file or option and the key."""
    data: dict = to_dict(Config())
    src = "<defaults>"
    if path is not None:
        src = str(path)
        loaded = read_yaml(path) or {}   # duplicate keys, alias bombs, non-files refused
        if not isinstance(loaded, dict):
            raise ConfigError(f"{src}: top level must be a mapping")
        _build(Config, loaded, src)   # validate keys/types of the file itself first
        data = _deep_merge(data, loaded)
    for item in overrides or []:
        keys, value = parse_override(item)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _build(Config, nested, f"--set {clip(item)}")
        data = _deep_merge(data, nested)
    cfg = _build(Config, data, src)
    validate(cfg, src + (" with --set overrides" if overrides else ""))
    return cfg


def inference_config(cfg: InferenceConfig | None = None, src: str = "<inference settings>",
                     **overrides: Any) -> InferenceConfig:
    """``cfg`` (default: the :class:`InferenceConfig` defaults) with ``overrides`` given by its own
    field names, checked like a YAML file (unknown key, type, choices, ``RANGES``): the one way the
    predictor, ``flareseg predict`` and the stages turn settings into an ``InferenceConfig``."""
    cfg = InferenceConfig() if cfg is None else cfg
    if not isinstance(cfg, InferenceConfig):
        raise TypeError(f"expected an InferenceConfig, got {type(cfg).__name__}")
    return config_from_dict({"inference": {**to_dict(cfg), **overrides}}, src).inference


def config_from_dict(data: dict, src: str = "<dict>") -> Config:
    """A Config from a plain dict, e.g. a stage's ``config.resolved.json`` (checked like YAML)."""
    cfg = _build(Config, _deep_merge(to_dict(Config()), data), src)
    validate(cfg, src)
    return cfg


def load_resolved(path: os.PathLike | str) -> Config:
    """The Config a stage ran with, from its ``config.resolved.json``."""
    with open(path) as f:
        return config_from_dict(json.load(f), str(path))


def resolved(cfg: Config) -> dict:
    return to_dict(cfg)


def config_hash(cfg: Any) -> str:
    """Stable digest (16 hex chars) of a config or any JSON-able part of it."""
    d = to_dict(cfg)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
