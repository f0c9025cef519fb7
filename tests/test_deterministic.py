"""Deterministic CUDA inference (issue 26, item 5): ``inference.deterministic`` turns cuDNN
autotuning off and deterministic algorithms on; the default keeps stock's autotuning."""
from __future__ import annotations

import torch

from flareseg.config import InferenceConfig
from flareseg.devices import set_cuda_determinism


def _record(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only=False: calls.append((on, warn_only)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    return calls


def test_deterministic_mode_turns_autotuning_off(monkeypatch):
    import os
    calls = _record(monkeypatch)
    set_cuda_determinism(True)
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
    assert calls == [(True, True)] and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_fast_mode_autotunes_and_leaves_the_rest(monkeypatch):
    import os
    calls = _record(monkeypatch)
    set_cuda_determinism(False)
    assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.deterministic is False
    assert calls == [] and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_deterministic_is_off_by_default_for_predict():
    assert InferenceConfig().deterministic is False


def test_fast_mode_without_autotune_uses_heuristic_kernels(monkeypatch):
    calls = _record(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    set_cuda_determinism(False, autotune=False)
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is False
    assert calls == []
    set_cuda_determinism(True, autotune=True)      # deterministic wins: never autotuned
    assert torch.backends.cudnn.benchmark is False and calls == [(True, True)]
