"""What runs the network (``inference.runtime``): the runtime table, one entry per runtime.

The names are :data:`flareseg.config.RUNTIMES` (the config's choices, so ``--runtime``'s too) and
this table must hold exactly those (checked on import).  An entry says what ``inference.device:
auto`` means for the runtime, why it cannot run on a device, which network precision it runs for
the one flareseg chose, and its factory: what turns the model's torch networks into the callables
the sliding window calls.  :class:`flareseg.inference.predictor.FastPredictor`, ``flareseg
predict`` (before anything is written), the pipeline's preflight and the command-line help read
it; a new runtime is one entry here, its module, and its name in the config's choices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from flareseg.config import RUNTIMES

if TYPE_CHECKING:
    import torch

#: ``(B, C, z, y, x)`` float tensor -> logits ``(B, K, z, y, x)``
Network = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Runners:
    """The callables that run a model's networks (one per fold), as a runtime's factory made them."""

    #: None: the torch networks themselves run (``FastPredictor.networks``, whatever they are when called)
    networks: list[Network] | None = None
    #: where the runtime's form of the networks came from (OpenVINO: ``"cache"``/``"converted"``); None: torch
    source: str | None = None
    #: whether torch autocast wraps the calls (the torch runtime); other runtimes set their precision themselves
    autocast: bool = True


@dataclass(frozen=True)
class Runtime:
    """One runtime of the table."""

    name: str
    #: the command-line help's phrase for it
    summary: str
    #: ``(networks on the device, input channels, network dtype name) -> Runners``
    factory: Callable[[Sequence[Any], int, str], Runners]
    #: what ``inference.device: auto`` means for it ("auto": CUDA when available, else the CPU)
    auto_device: str = "auto"
    #: ``device type -> why it cannot run there`` (None: it can)
    problem: Callable[[str], str | None] = lambda device_type: None
    #: ``(dtype name, reason, the CPU has native bf16) -> (dtype name, reason)``: the precision it
    #: really runs for the one :func:`flareseg.inference.predictor.choose_dtype` chose
    precision: Callable[[str, str, bool], tuple[str, str]] = lambda name, reason, native_bf16: (name, reason)


def _torch_runners(networks: Sequence[torch.nn.Module], in_channels: int, dtype_name: str) -> Runners:
    return Runners()


# OpenVINO's module (torch, numpy) is imported when one of these runs, not with the table: the
# command line reads the table for its help and the config choices without importing torch
def _openvino_runners(networks: Sequence[torch.nn.Module], in_channels: int, dtype_name: str) -> Runners:
    from flareseg.inference.openvino_runtime import openvino_networks
    nets, source = openvino_networks(networks, in_channels, dtype_name)
    return Runners(list(nets), source, autocast=False)


def _openvino_problem(device_type: str) -> str | None:
    from flareseg.inference.openvino_runtime import device_problem
    return device_problem(device_type)


def _openvino_precision(name: str, reason: str, native_bf16: bool) -> tuple[str, str]:
    from flareseg.inference.openvino_runtime import precision
    return precision(name, reason, native_bf16)


TABLE: dict[str, Runtime] = {r.name: r for r in (
    Runtime("torch", "the model's torch networks (CUDA or CPU)", _torch_runners),
    Runtime("openvino", "OpenVINO on the CPU (~2x faster float32 there; needs pip install "
                        "'flareseg[openvino]'; the converted network is cached in ~/.cache/flareseg or "
                        "$FLARESEG_CACHE_DIR)",
            _openvino_runners, auto_device="cpu", problem=_openvino_problem, precision=_openvino_precision),
)}
if tuple(TABLE) != tuple(RUNTIMES):
    raise ImportError(f"flareseg.inference.runtimes: the runtime table ({', '.join(TABLE)}) and "
                      f"flareseg.config.RUNTIMES ({', '.join(RUNTIMES)}) must name the same runtimes")


def runtime(name: str) -> Runtime:
    """The table's entry for ``name``; ValueError naming the choices for another name."""
    if name not in TABLE:
        raise ValueError(f"inference.runtime: unknown runtime {name!r} (expected one of {', '.join(TABLE)})")
    return TABLE[name]


def runtime_device(name: str, device: str) -> str:
    """The ``inference.device`` that runs: ``auto`` is the runtime's own meaning of it."""
    return TABLE[name].auto_device if device == "auto" and name in TABLE else device


def runtime_problem(name: str, device_type: str) -> str | None:
    """Why ``inference.runtime = name`` cannot run on ``device_type`` here (None: it can)."""
    try:
        return runtime(name).problem(device_type)
    except ValueError as e:
        return str(e)


def resolve_runtime(name: str, device: str) -> tuple["torch.device", str | None]:
    """The device ``inference.runtime``/``inference.device`` run on, and why they cannot (None: they
    can): the one check of ``flareseg predict`` (before anything is written) and the predictor."""
    from flareseg.devices import resolve_device
    dev = resolve_device(runtime_device(name, device))
    return dev, runtime_problem(name, dev.type)


def runtime_help() -> str:
    """The runtimes for ``--runtime``'s help: ``name = summary`` each, in the table's order."""
    return "; ".join(f"{r.name} = {r.summary}" for r in TABLE.values())
