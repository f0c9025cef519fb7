"""Training's foreground oversampling is :func:`choose_oversampling_class` (issue 27): the label-type
data loader crops around a class its batch's type annotates, chosen by that tested function."""
from __future__ import annotations

import numpy as np
import pytest

from flareseg.labels import CLASS_NAMES

PATCH = (4, 8, 8)


class TwoCornerCases:
    """In-memory stand-in for nnU-Net's preprocessed dataset: class 1 near one corner, class 2 in the
    opposite one, so a patch around either cannot hold the other."""

    identifiers = ["a", "b"]

    def load_case(self, key):
        seg = np.zeros((1, 8, 32, 32), np.int16)
        seg[0, :2, :3, :3] = 1
        seg[0, 6:, 29:, 29:] = 2
        locations = {c: np.argwhere(seg == c) for c in (1, 2)}   # (channel, z, y, x) rows, as nnU-Net's
        return seg.astype(np.float32), seg, None, {"class_locations": locations}


def _loader(case_type):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from flareseg.nnunet.trainer import LabelTypeDataLoader
    lm = LabelManager({name: i for i, name in CLASS_NAMES.items()}, regions_class_order=None)
    return LabelTypeDataLoader(TwoCornerCases(), 2, PATCH, PATCH, lm, oversample_foreground_percent=1.0,
                               case_types={"a": case_type, "b": case_type})


def _classes_per_sample(loader, batches=10):
    np.random.seed(0)
    return [set(np.unique(t.numpy()).tolist()) for _ in range(batches)
            for t in loader.generate_train_batch()["target"]]


@pytest.mark.parametrize("case_type,wanted", [((1, 3), 1), ((2, 14), 2)])
def test_oversampled_patches_hold_an_annotated_class(case_type, wanted):
    for classes in _classes_per_sample(_loader(case_type)):
        assert wanted in classes and (3 - wanted) not in classes   # never the unannotated corner


def test_loader_crops_where_choose_oversampling_class_says(monkeypatch):
    import flareseg.nnunet.trainer as trainer
    calls = []

    def spy(rng, t, class_locations):
        calls.append(tuple(t))
        return 2   # not annotated by the type: only the loader's use of this function puts it there

    monkeypatch.setattr(trainer, "choose_oversampling_class", spy)
    samples = _classes_per_sample(_loader((1,)), batches=3)
    assert calls == [(1,)] * 6
    assert all(2 in s and 1 not in s for s in samples)


def test_no_annotated_class_in_the_case_crops_at_random(monkeypatch):
    import flareseg.nnunet.trainer as trainer
    monkeypatch.setattr(trainer, "choose_oversampling_class", lambda rng, t, loc: None)
    samples = _classes_per_sample(_loader((1,)), batches=20)
    assert any(s == {0} for s in samples)   # random crops, often neither corner
