"""Read nnU-Net plans and expose what non-nnU-Net code needs (spacing, patch, normalisation)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from flareseg.io import read_json


def configuration(plans: dict, name: str) -> dict:
    """A configuration of the plans with ``inherits_from`` resolved."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    return PlansManager(plans).get_configuration(name).configuration


def normalizer(plans: dict | Path, name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The intensity normalisation nnU-Net applies to this configuration's training data, as a
    function of a ``(Z, Y, X)`` float image (nnU-Net's own normalisation classes)."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    if not isinstance(plans, dict):
        plans = read_json(plans)
    conf = configuration(plans, name)
    scheme = conf["normalization_schemes"][0]
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    # the plans name the scheme class (e.g. "CTNormalization"); resolve it as nnU-Net's preprocessing
    # does (get_normalization_scheme maps *channel names* and falls back to a per-image z-score)
    norm_cls = recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "preprocessing" / "normalization"),
                                           scheme, "nnunetv2.preprocessing.normalization")
    if norm_cls is None:
        raise ValueError(f"plans configuration {name!r}: unknown normalization scheme {scheme!r}")
    norm = norm_cls(use_mask_for_norm=conf["use_mask_for_norm"][0], intensityproperties=props)

    def apply(image: np.ndarray) -> np.ndarray:
        return norm.run(np.asarray(image, dtype=np.float32).copy(), None)

    return apply


def body_threshold(plans: dict | Path, name: str, hu: float = -500.0) -> float:
    """The normalised intensity above which a voxel of this configuration's training data is body
    (:func:`flareseg.anatomy.body_mask` on normalised images): :func:`above_clip_floor` with the
    plans' normalisation and lower clip (the foreground 0.5th percentile)."""
    if not isinstance(plans, dict):
        plans = read_json(plans)
    lower = plans["foreground_intensity_properties_per_channel"]["0"].get("percentile_00_5")
    return above_clip_floor(normalizer(plans, name), lower, hu)


def above_clip_floor(norm: Callable[[np.ndarray], np.ndarray], lower_hu: float | None,
                     hu: float = -500.0) -> float:
    """``norm(hu)``, unless the normalisation clips below at ``lower_hu`` > ``hu`` (nnU-Net's CT
    normalisation clips at the foreground 0.5th percentile, usually above -500 HU: -118 HU in the
    demo plans).  Then ``hu`` and all air collapse onto the clip floor, ``image > norm(hu)`` drops
    the floor's fat and ``image < norm(hu)`` finds no air; the threshold becomes the normalised
    value 1 HU above the floor, so body = above the clip floor (fat below it counts as outside,
    which keeps pastes conservative).  ``norm`` maps a float32 HU array to training intensities."""
    def n(v: float) -> float:
        return float(np.asarray(norm(np.array([[[v]]], dtype=np.float32))).ravel()[0])

    t = n(hu)
    if lower_hu is None or t > n(-1e9):
        return t
    return n(float(lower_hu) + 1.0)
