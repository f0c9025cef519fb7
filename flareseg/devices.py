"""Which torch device a run uses: ``"auto"`` picks CUDA when available, else the CPU.

A ground-floor helper: training (:mod:`flareseg.nnunet.training`), the predictor
(:mod:`flareseg.inference.predictor`) and the benchmarks all resolve ``device`` settings here.
"""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a CUDA device raises."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return d
