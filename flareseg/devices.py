"""Which torch device a run uses: ``"auto"`` picks CUDA when available, else the CPU.

A ground-floor helper: training (:mod:`flareseg.nnunet.training`), the predictor
(:mod:`flareseg.inference.predictor`) and the benchmarks all resolve ``device`` settings here;
the CPU's feature flags (native bfloat16 or not) are read here too.
"""
from __future__ import annotations

import os

import torch

#: /proc/cpuinfo flags of CPUs with native bfloat16 matrix/vector instructions (Intel AMX, AVX-512 BF16)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in ``path`` (empty when unreadable: not Linux).

    ``FLARESEG_CPU_FLAGS`` (space-separated, may be empty), when set, replaces them: the test suite
    sets it empty so ``dtype: auto`` computes float32 on every machine; ``amx_bf16`` forces the
    bfloat16 choice."""
    env = os.environ.get("FLARESEG_CPU_FLAGS")
    if env is not None:
        return frozenset(env.split())
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a CUDA device raises."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return d


def set_cuda_determinism(deterministic: bool, autotune: bool = True) -> None:
    """CUDA kernel selection for inference.

    ``False`` (fast): ``cudnn.benchmark`` = ``autotune`` (autotuned kernels, which may differ
    between processes and so change results in the last bits; without ``autotune`` cuDNN's
    heuristics pick them, nothing is timed); other settings left as they are.  ``True``:
    ``cudnn.benchmark`` off, cuDNN deterministic and ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` (an operation without a deterministic kernel warns instead of failing);
    ``CUBLAS_WORKSPACE_CONFIG`` is set to ``:4096:8`` unless already set (cuBLAS needs it for
    reproducible results).  Process-wide."""
    torch.backends.cudnn.benchmark = autotune and not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
