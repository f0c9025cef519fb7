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


def test_predictor_autotunes_only_from_its_second_case(tmp_path, monkeypatch):
    """A fresh process predicting one case (FLARE's cadence) never pays cuDNN autotuning; later
    cases of the same predictor autotune; deterministic mode never does."""
    import flareseg.devices
    from tiny_model import write_model_folder
    from flareseg.inference.predictor import FastPredictor
    from tests.bad_input import tiny_ct
    md = write_model_folder(tmp_path / "m", seed=0)
    calls = []
    monkeypatch.setattr(flareseg.devices, "set_cuda_determinism",
                        lambda deterministic, autotune=True: calls.append((deterministic, autotune)))
    p = FastPredictor(md, device="cpu")
    assert p.run(tiny_ct(tmp_path / "a.nii.gz")).stats["cudnn_autotune"] is None and calls == []   # CPU: untouched
    for deterministic, after, want in ((False, 1, [False, True, True]), (False, 0, [True, True]), (True, 1, [False, False])):
        p = FastPredictor(md, device="cpu", deterministic=deterministic, autotune_after=after)
        p.device = torch.device("cuda")     # only the kernel choice is asked here, nothing runs on CUDA
        got = []
        for _ in want:
            got.append(p._select_cuda_kernels())
            p.cases_run += 1
        assert got == want and calls[-len(want):] == [(deterministic, w) for w in want]
