"""Sliding-window memory (issue 26, items 8 and 10): the uncovered-voxel fill builds no index
tensor (int64 per voxel on the device), and out of device memory the volume is predicted again
with the sums on the host, with one WARNING.  The out-of-memory error is forced by a predictor;
the "device" is the CPU with its host fallback patched in."""
from __future__ import annotations

import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flareseg.inference import sliding_window
from flareseg.inference.sliding_window import UNCOVERED_LOGIT, predict_sliding_window

PATCH = (16, 32, 32)


def _background(x: torch.Tensor) -> torch.Tensor:
    """3-class logits: background everywhere, so skipping leaves each plane's windows 1 and 2."""
    out = torch.zeros((x.shape[0], 3, *x.shape[2:]))
    out[:, 0] = 5 + x[:, 0]
    return out


class Ops(TorchDispatchMode):
    """Records each operation with the largest tensor it reads (element count)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = [a for a in args for a in (a if isinstance(a, (list, tuple)) else [a])]
        size = max((a.numel() for a in flat if isinstance(a, torch.Tensor)), default=0)
        self.calls.append((str(func.overloadpacket), size))
        return func(*args, **(kwargs or {}))


def test_uncovered_fill_uses_masked_fills_not_indices():
    vol = torch.rand((1, 32, 48, 48), generator=torch.Generator().manual_seed(1))
    with Ops() as ops:
        logits, stats = predict_sliding_window(vol, _background, PATCH, skip=True, return_logits=True)
    assert stats.windows_skipped > 0
    voxels = 32 * 48 * 48
    indexing = [(n, k) for n, k in ops.calls if k >= voxels and n in ("aten.nonzero", "aten.index", "aten.index_put_",
                                                                      "aten.index_put", "aten._index_put_impl_")]
    assert not indexing      # no volume-sized mask turned into indices
    corner = logits[:, :, :16, 32:]                  # only windows 1 of each plane cover it
    assert (corner[0] == 0).all() and (corner[1:] == UNCOVERED_LOGIT).all()
    assert (logits[0, :, 20, 20] > 0).all()          # covered voxels keep their average


def test_out_of_memory_falls_back_to_host_sums_with_one_warning(monkeypatch, caplog):
    vol = torch.rand((2, 20, 40, 40), generator=torch.Generator().manual_seed(3))
    want, _ = predict_sliding_window(vol, lambda x: 2 * x, PATCH, return_logits=True)
    calls = {"n": 0}

    def net(x):
        calls["n"] += 1
        if calls["n"] == 2:      # the device runs out of memory in the middle of the volume
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 2 * x

    seen = []
    original = sliding_window.predict_sliding_window

    def spy(*a, **k):
        seen.append(k.get("acc_device"))
        return original(*a, **k)

    monkeypatch.setattr(sliding_window, "predict_sliding_window", spy)
    monkeypatch.setattr(sliding_window, "host_fallback", lambda device: torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="flareseg.inference.sliding_window"):
        got, _ = original(vol, net, PATCH, return_logits=True)
    assert torch.equal(got, want)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "out of memory" in warnings[0].getMessage()
    assert "sums on the host" in warnings[0].getMessage()
    assert seen == [torch.device("cpu"), torch.device("cpu")]   # the device attempt, then the host one


def test_out_of_memory_on_the_host_is_raised():
    def net(x):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(torch.OutOfMemoryError):   # nothing to fall back to
        predict_sliding_window(torch.rand((1, 16, 32, 32)), net, PATCH)


def test_out_of_memory_again_on_the_host_is_raised(monkeypatch):
    def net(x):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(sliding_window, "host_fallback", lambda device: torch.device("cpu"))
    with pytest.raises(torch.OutOfMemoryError):   # one retry, no loop
        predict_sliding_window(torch.rand((1, 16, 32, 32)), net, PATCH)
