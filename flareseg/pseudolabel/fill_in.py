"""Organ fill-in: complete partially annotated labels (e.g. tumor-only cases) from a prediction.

Rule: a voxel holding an annotated class keeps it.  A voxel holding 0 may take a *missing* class
from the prediction (a class of ``fill_classes`` not in the label type).  A predicted voxel of an
*annotated* class is never added: where an annotated class is absent, its absence is known.  So the
annotator's foreground is untouched and the fill only claims voxels the annotation left at 0 —
which, for the missing classes, meant "unknown".

The new label type is the annotated type plus every fill class, also those the prediction does not
contain: like a pseudo label, the filled label claims those organs absent where not predicted.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from flareseg.labels import ORGANS, LabelType, label_type


def fill_in(annotated_label: np.ndarray, annotated_classes: Iterable[int], predicted_label: np.ndarray,
            fill_classes: Iterable[int] = ORGANS) -> tuple[np.ndarray, LabelType]:
    """Add missing classes from ``predicted_label`` to ``annotated_label`` (both ``(Z, Y, X)`` ints).

    Returns ``(label, label_type)``; the label keeps ``annotated_label``'s dtype.  Raises
    ``ValueError`` on a shape mismatch or when the annotation holds classes outside its label type.
    """
    if annotated_label.shape != predicted_label.shape:
        raise ValueError(f"annotation {annotated_label.shape} and prediction {predicted_label.shape} "
                         f"grids differ")
    if predicted_label.size and int(predicted_label.min()) < 0:
        raise ValueError("prediction holds negative label values")
    annotated = label_type(annotated_classes)
    present = label_type(np.unique(annotated_label).tolist())
    stray = sorted(set(present) - set(annotated))
    if stray:
        raise ValueError(f"annotation holds classes {stray} outside its label type {list(annotated)}")
    missing = tuple(c for c in label_type(fill_classes) if c not in annotated)
    top = max(int(predicted_label.max(initial=0)), max(missing, default=0)) + 1
    lut = np.zeros(top, dtype=bool)
    lut[list(missing)] = True
    take = (annotated_label == 0) & lut[predicted_label]
    out = annotated_label.copy()
    out[take] = predicted_label[take].astype(out.dtype)
    return out, label_type(annotated + missing)
