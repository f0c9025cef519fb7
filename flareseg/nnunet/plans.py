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
