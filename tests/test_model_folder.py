"""The tiny model-folder scaffolding shared by tests and benches (tests/tiny_model.py)."""
from __future__ import annotations

import numpy as np
import torch

from tiny_model import fit_model_folder, tiny_plans, write_model_folder
from flareseg.nnunet.checkpoint import load_checkpoint

LABELS = {0: "background", 1: "a", 2: "b"}


def _fit(dest, outer_threads: int) -> dict:
    md = write_model_folder(dest, plans=tiny_plans(patch_size=(8, 16, 16)), labels=LABELS, seed=1)
    rng = np.random.default_rng(0)
    imgs = [rng.normal(0, 200, (10, 20, 20)) for _ in range(2)]
    labs = [(i > 100).astype(int) + 2 * (i < -100).astype(int) for i in imgs]
    before = torch.get_num_threads()
    torch.set_num_threads(outer_threads)
    try:
        fit_model_folder(md, imgs, labs, steps=4)
        assert torch.get_num_threads() == outer_threads     # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    return load_checkpoint(md / "fold_0" / "checkpoint_final.pth")["network_weights"]


def test_fitted_weights_do_not_depend_on_the_callers_thread_count(tmp_path):
    one, two = _fit(tmp_path / "one", 1), _fit(tmp_path / "two", 2)
    fresh = load_checkpoint(write_model_folder(tmp_path / "fresh", plans=tiny_plans(patch_size=(8, 16, 16)),
                                               labels=LABELS, seed=1)
                            / "fold_0" / "checkpoint_final.pth")["network_weights"]
    assert any(not torch.equal(one[k], fresh[k]) for k in one)     # it did train
    assert all(torch.equal(one[k], two[k]) for k in one)
