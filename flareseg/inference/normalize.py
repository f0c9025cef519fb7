"""Intensity normalisation from nnU-Net plans, in place on a torch tensor.

``CTNormalization``: clip to the dataset's foreground ``percentile_00_5``/``percentile_99_5``
(HU), subtract the foreground ``mean``, divide by its ``std``.  ``ZScoreNormalization`` (without
mask) and ``NoNormalization`` are supported too; other schemes raise.
"""
from __future__ import annotations

from typing import Mapping

import torch

SUPPORTED = ("CTNormalization", "ZScoreNormalization", "NoNormalization")


def normalize_(image: torch.Tensor, scheme: str, props: Mapping[str, float] | None = None,
               use_mask: bool = False) -> torch.Tensor:
    """Normalise a float ``(Z, Y, X)`` tensor in place with nnU-Net's ``scheme``; returns it."""
    if not image.is_floating_point():
        raise TypeError(f"normalize_ needs a float tensor, got {image.dtype}")
    if scheme == "CTNormalization":
        if props is None:
            raise ValueError("CTNormalization needs the plans' foreground intensity properties")
        image.clamp_(float(props["percentile_00_5"]), float(props["percentile_99_5"]))
        image.sub_(float(props["mean"])).div_(max(float(props["std"]), 1e-8))
    elif scheme == "ZScoreNormalization":
        if use_mask:
            raise NotImplementedError("ZScoreNormalization with use_mask_for_norm is not supported")
        mean, std = image.mean(), image.std(unbiased=False)
        image.sub_(mean).div_(std.clamp_min(1e-8))
    elif scheme != "NoNormalization":
        raise NotImplementedError(f"normalisation scheme {scheme!r} is not supported ({', '.join(SUPPORTED)})")
    return image
