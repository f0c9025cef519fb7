"""Per-case validation of images and labels before they enter the pipeline.

Every check raises :class:`flareseg.io.InputError` naming the file and the reason, so a batch
can report the case and go on with the others.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from flareseg.file_check import nifti_nonfinite_count
from flareseg.image_check import ct_plausibility_problem, nonfinite_count, nonfinite_problem, spacing_problem
from flareseg.io import (COPY_GEOMETRY_MAX_VOXELS, Geometry, InputError, copyable_geometry, geometry_mismatch,
                         read_image)
from flareseg.labels import MAX_LABEL, label_type, type_to_str

log = logging.getLogger(__name__)

@dataclass
class CheckedCase:
    """A validated case: the image, its (possibly re-oriented) label, and notes for the report."""
    image: sitk.Image
    label: sitk.Image | None
    classes_present: tuple[int, ...]
    notes: list[str]


def check_image(img: sitk.Image, path: Path) -> None:
    """The input limits of :mod:`flareseg.image_check` (spacing range, finite values, CT
    plausibility); raises InputError."""
    why = spacing_problem(img.GetSpacing())
    if why:
        raise InputError(path, why)
    arr = sitk.GetArrayViewFromImage(img)
    n = nonfinite_count(arr)
    if not n and np.issubdtype(arr.dtype, np.floating) and path.is_file():
        n = nifti_nonfinite_count(path)     # NaN/inf that ITK's reader turned into numbers
    why = nonfinite_problem(n) or ct_plausibility_problem(arr)
    if why:
        raise InputError(path, why)


def align_label_to_image(label: sitk.Image, image: sitk.Image, atol_vox: float = 1e-3) -> sitk.Image | None:
    """Re-grid ``label`` onto ``image`` when both describe the same voxel lattice in physical space
    (e.g. a label stored with a flipped or permuted axis). Returns ``None`` when they do not."""
    if sorted(label.GetSize()) != sorted(image.GetSize()):
        return None
    size = image.GetSize()
    corners = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    hit = set()
    for c in corners:
        p = image.TransformIndexToPhysicalPoint(c)
        q = np.array(label.TransformPhysicalPointToContinuousIndex(p))
        if np.abs(q - np.round(q)).max() > atol_vox:
            return None
        qi = np.round(q).astype(int)
        if (qi < 0).any() or (qi >= np.array(label.GetSize())).any():
            return None
        hit.add(tuple(qi))
    if len(hit) != len(corners):  # all corners of the label must be used: same lattice, not a subset
        return None
    return sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())


#: environment variable set (to ``1``) by ``import --copy-image-geometry`` for one command, so that
#: worker processes see it too
COPY_GEOMETRY_ENV = "FLARESEG_COPY_IMAGE_GEOMETRY"


def _copy_geometry(label: sitk.Image, image: sitk.Image, label_path: Path, image_path: Path,
                   mism: list[str], notes: list[str], copy: bool | None) -> sitk.Image:
    """``label`` with ``image``'s geometry when copying is asked for (``copy``, default
    :data:`COPY_GEOMETRY_ENV`) and moves no label voxel by more than
    :data:`flareseg.io.COPY_GEOMETRY_MAX_VOXELS` (half a voxel); noted and logged per case.
    Otherwise raises InputError naming the label, with the differences (and the flag when it
    would help)."""
    copy = os.environ.get(COPY_GEOMETRY_ENV) == "1" if copy is None else copy
    why_not = copyable_geometry(Geometry.of(image), Geometry.of(label))
    if copy and why_not is None:
        note = f"label geometry replaced by the image's ({'; '.join(mism)})"
        log.warning("%s: %s", label_path, note)
        notes.append(note)
        out = sitk.Image(label)
        out.CopyInformation(image)
        return out
    hint = ""
    if why_not is None:
        hint = (f" (within {COPY_GEOMETRY_MAX_VOXELS:g} voxel: import --copy-image-geometry copies the "
                "image's geometry onto the label)")
    elif copy:
        hint = f" (not copied: {why_not})"
    raise InputError(label_path, f"geometry does not match image {image_path.name}: " + "; ".join(mism) + hint)


def add_copy_geometry_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--copy-image-geometry`` to ``flareseg import`` and wrap its ``func`` so the choice
    reaches every case's check (:data:`COPY_GEOMETRY_ENV` set for the call, then restored)."""
    parser.add_argument("--copy-image-geometry", action="store_true",
                        help="a label whose origin/spacing/direction differ from its image's by more than the "
                             "tolerance, but move no voxel by more than half a voxel, gets the image's geometry "
                             "(logged per case) instead of being refused")
    func = parser.get_default("func")

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "copy_image_geometry", False):
            return func(args)
        old = os.environ.get(COPY_GEOMETRY_ENV)
        os.environ[COPY_GEOMETRY_ENV] = "1"
        try:
            return func(args)
        finally:
            if old is None:
                os.environ.pop(COPY_GEOMETRY_ENV, None)
            else:
                os.environ[COPY_GEOMETRY_ENV] = old
    parser.set_defaults(func=run)


def check_label(label: sitk.Image, image: sitk.Image, label_path: Path, image_path: Path,
                annotated: Sequence[int] | None, copy_image_geometry: bool | None = None
                ) -> tuple[sitk.Image, tuple[int, ...], list[str]]:
    """Validate a label against its image; returns the label on the image grid (uint8), the classes
    present and report notes.  ``copy_image_geometry`` (default: :data:`COPY_GEOMETRY_ENV` is
    ``1``, set by ``import --copy-image-geometry``): see :func:`_copy_geometry`.  Raises InputError
    naming the label file."""
    notes: list[str] = []
    mism = geometry_mismatch(Geometry.of(image), Geometry.of(label))
    if mism:
        aligned = align_label_to_image(label, image)
        if aligned is not None:
            notes.append("label re-gridded onto the image lattice (same physical grid, different axis order/flip)")
            label = aligned
        else:
            label = _copy_geometry(label, image, label_path, image_path, mism, notes, copy_image_geometry)
    arr = sitk.GetArrayFromImage(label)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(label_path, "label holds non-finite values")
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(label_path, "label values are not integers")
    vals = np.unique(arr)
    bad = [int(v) for v in vals if v < 0 or v > MAX_LABEL]
    if bad:
        raise InputError(label_path, f"label values {bad[:5]} outside 0..{MAX_LABEL}")
    present = label_type(int(v) for v in vals)
    if annotated is not None and len(annotated) > 0 and not present:
        raise InputError(label_path, f"label is empty but the manifest claims classes {type_to_str(annotated)}")
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(image)
    return out, present, notes


def check_case(image_path: Path, label_path: Path | None = None,
               annotated: Sequence[int] | None = None, copy_image_geometry: bool | None = None) -> CheckedCase:
    """Read and validate one case (label optional)."""
    img = read_image(image_path)
    check_image(img, image_path)
    if label_path is None:
        return CheckedCase(img, None, (), [])
    lab = read_image(label_path)
    lab, present, notes = check_label(lab, img, label_path, image_path, annotated, copy_image_geometry)
    if annotated is not None:
        extra = [c for c in present if c not in set(annotated)]
        if extra:
            raise InputError(label_path, f"label holds classes {extra} that the manifest does not list as annotated")
    return CheckedCase(img, lab, present, notes)
