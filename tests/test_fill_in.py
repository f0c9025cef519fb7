"""Organ fill-in never changes annotated voxels and only adds missing classes."""
from __future__ import annotations

import numpy as np
import pytest

from flareseg.labels import ORGANS, TUMOR
from flareseg.pseudolabel.fill_in import fill_in


def test_tumor_only_case_gets_organs_around_its_tumor():
    ann = np.array([0, 0, 14, 14, 0, 0], np.uint8).reshape(1, 1, -1)
    pred = np.array([0, 1, 1, 14, 14, 3], np.uint8).reshape(1, 1, -1)
    out, lt = fill_in(ann, (TUMOR,), pred)
    # tumor voxels kept (even where liver is predicted); predicted tumor at 0 not added
    assert out.ravel().tolist() == [0, 1, 14, 14, 0, 3]
    assert lt == ORGANS + (TUMOR,)
    assert out.dtype == ann.dtype


def test_partial_organs_annotated_background_of_annotated_class_is_kept():
    ann = np.array([1, 0, 0, 0], np.uint8).reshape(1, 1, -1)      # liver annotated
    pred = np.array([2, 1, 2, 0], np.uint8).reshape(1, 1, -1)     # liver outside annotated liver
    out, lt = fill_in(ann, (1,), pred, fill_classes=(1, 2))
    assert out.ravel().tolist() == [1, 0, 2, 0]
    assert lt == (1, 2)


def test_random_volumes_never_change_annotated_voxels():
    rng = np.random.default_rng(3)
    for _ in range(5):
        annotated = tuple(sorted(rng.choice(np.arange(1, 15), size=4, replace=False).tolist()))
        ann = rng.choice([0] + list(annotated), size=(4, 5, 6)).astype(np.uint8)
        pred = rng.integers(0, 15, size=ann.shape).astype(np.uint8)
        out, lt = fill_in(ann, annotated, pred)
        nz = ann != 0
        assert np.array_equal(out[nz], ann[nz])
        changed = out != ann
        assert np.array_equal(out[changed], pred[changed])
        assert not np.isin(out[changed], annotated).any()
        assert set(lt) == set(annotated) | set(ORGANS)


def test_errors():
    ann = np.array([[[0, 5]]], np.uint8)
    with pytest.raises(ValueError, match="outside its label type"):
        fill_in(ann, (TUMOR,), ann)
    with pytest.raises(ValueError, match="grids differ"):
        fill_in(ann, (5,), np.zeros((1, 1, 3), np.uint8))
