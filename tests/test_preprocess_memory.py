"""Preprocessing workers bounded by memory (issue 26, item 11): a count of workers is capped so
the largest cases fit into the available memory at once.  Image headers and memory are fakes."""
from __future__ import annotations

import logging

import pytest

from flareseg.nnunet import preprocess_memory as pm

GB = 10 ** 9


def test_case_bytes_grow_with_the_larger_grid():
    small = pm.case_bytes((512, 512, 100), (0.8, 0.8, 2.5), (2.5, 0.8, 0.8))
    assert small == pm.WORKER_BASE_BYTES + pm.BYTES_PER_VOXEL * 512 * 512 * 100
    upsampled = pm.case_bytes((512, 512, 100), (0.8, 0.8, 5.0), (2.5, 0.8, 0.8))   # 2x along z
    assert upsampled - pm.WORKER_BASE_BYTES == pytest.approx(2 * (small - pm.WORKER_BASE_BYTES))


@pytest.mark.parametrize("requested, needs, available, want", [
    (16, [10 * GB] * 40, 128 * GB, 11),      # 11 x 10 GB fit into 90 % of 128 GB
    (16, [10 * GB] * 3 + [1 * GB] * 40, 64 * GB, 16),   # the 3 largest + 13 small ones fit
    (4, [100 * GB], 64 * GB, 1),            # never fewer than one
    (8, [5 * GB] * 10, None, 8),            # memory unknown: the count as asked
    (2, [1 * GB] * 10, 128 * GB, 2),        # never more than asked
])
def test_bounded_workers(requested, needs, available, want):
    assert pm.bounded_workers(requested, needs, available) == want


def test_flare_scale_dataset_is_bounded_with_a_warning(tmp_path, monkeypatch, caplog):
    images = tmp_path / "imagesTr"
    images.mkdir()
    for i in range(20):
        (images / f"c{i:02d}_0000.nii.gz").write_bytes(b"")
    sizes = {f"c{i:02d}_0000.nii.gz": ((512, 512, 550 if i < 10 else 120), (0.8, 0.8, 1.0)) for i in range(20)}
    monkeypatch.setattr(pm, "image_geometry", lambda p: sizes[p.name])
    monkeypatch.setattr(pm, "available_bytes", lambda: 128 * GB)
    with caplog.at_level(logging.WARNING):
        n = pm.dataset_workers(tmp_path, [(2.5, 0.82, 0.82)], 16)
    # 550 slices at 1 mm, 512x512: 80 B x 144 M voxels + 0.9 GB = 12.4 GB per case
    assert n == 9 and "9 of the 16 requested workers" in caplog.text
    monkeypatch.setattr(pm, "available_bytes", lambda: 1024 * GB)
    assert pm.dataset_workers(tmp_path, [(2.5, 0.82, 0.82)], 16) == 16


def test_fixed_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLARESEG_PREPROCESS_WORKERS", "3")
    assert pm.env_workers() == 3
    monkeypatch.delenv("FLARESEG_PREPROCESS_WORKERS")
    assert pm.env_workers() is None
