"""Elastic deformation in nnU-Net's training transforms (the paper's "rotations, elastic
deformations and cropping"; nnU-Net 2.8.1's stock ``get_training_transforms`` builds its
``SpatialTransform`` with ``p_elastic_deform=0``).

:func:`with_elastic` switches it on in the transforms nnU-Net built, with the settings of
``flareseg_train.elastic`` (:class:`flareseg.config.ElasticConfig`): the same transform, the same
grid for image and segmentation, so labels move with the image.  batchgeneratorsv2 takes the
field's smoothing as a fraction of the patch edge per axis; :class:`SigmaFraction` converts the
config's sigma in voxels (nnU-Net v1's ``elastic_deform_sigma``), so the field is equally smooth
along every axis of an anisotropic patch.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np


class SigmaFraction:
    """batchgeneratorsv2 ``elastic_deform_scale`` callable: a sigma drawn uniformly in ``sigma``
    (voxels), as a fraction of the patch edge along axis ``dim`` (picklable, for worker processes)."""

    def __init__(self, sigma: Sequence[float]):
        self.lo, self.hi = (float(s) for s in sigma)

    def __call__(self, image=None, dim=None, patch_size=None, **_) -> float:
        edge = min(patch_size) if dim is None else patch_size[dim]
        return float(np.random.uniform(self.lo, self.hi)) / float(edge)


def spatial_transforms(transform) -> Iterator:
    """Every batchgeneratorsv2 ``SpatialTransform`` inside ``transform`` (composed or wrapped)."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    if isinstance(transform, SpatialTransform):
        yield transform
        return
    for child in getattr(transform, "transforms", None) or ():
        yield from spatial_transforms(child)
    inner = getattr(transform, "transform", None)
    if inner is not None:
        yield from spatial_transforms(inner)


def with_elastic(transform, elastic: Mapping | None):
    """``transform`` (nnU-Net's training transforms) with elastic deformation set on its spatial
    transform: ``elastic`` = ``{"probability", "sigma" (voxels), "magnitude" (voxels)}``.  ``None``
    (a model folder written before the key existed) leaves the transforms as nnU-Net built them.
    Returns ``transform`` (changed in place)."""
    if elastic is None:
        return transform
    found = list(spatial_transforms(transform))
    if not found:
        raise ValueError("flareseg_train.elastic: nnU-Net's training transforms hold no SpatialTransform "
                         "to deform elastically")
    from flareseg.config import ElasticConfig
    cfg = ElasticConfig(**elastic)
    for t in found:
        t.p_elastic_deform = float(cfg.probability)
        t.elastic_deform_scale = SigmaFraction(cfg.sigma)
        t.elastic_deform_magnitude = tuple(float(m) for m in cfg.magnitude)
    return transform


def orientation_augmentation(patch_size: Sequence[int], dummy_2d: bool, mirror_axes: Sequence[int] | None,
                             max_rotation_deg: float | None, stock_rotation, stock_mirror) -> tuple:
    """``(rotation, mirror_axes, initial_patch_size)`` for nnU-Net's training transforms.

    ``None`` keeps nnU-Net's choice (``stock_rotation`` / ``stock_mirror``); ``max_rotation_deg``
    sets the rotation range to +-that angle (about z only when nnU-Net rotates in-plane, ``dummy_2d``).
    The initial patch (what the loader crops before the spatial transform) is nnU-Net's rule for the
    rotation that results."""
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    rotation = stock_rotation if max_rotation_deg is None else \
        (-float(max_rotation_deg) / 180 * np.pi, float(max_rotation_deg) / 180 * np.pi)
    mirror = tuple(stock_mirror) if mirror_axes is None else tuple(int(a) for a in mirror_axes)
    initial = get_patch_size(list(patch_size), rotation, rotation, rotation, (0.85, 1.25))
    if dummy_2d:
        initial[0] = patch_size[0]
    return rotation, mirror, tuple(int(v) for v in initial)

