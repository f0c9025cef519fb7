"""OpenVINO as the network runtime on the CPU (``inference.runtime: openvino``, optional extra).

On a CPU without native bf16 the paper-size network is the whole cost of a prediction, and
OpenVINO's CPU plugin runs the same float32 network ~2x faster than torch's eager oneDNN path
(docs/benchmarks/predictor_levers.md).  Only the network call changes: windows, Gaussian sums,
skipping and export stay flareseg's torch code, and ``window_fn`` calls an :class:`OpenVINONetwork`
where it would call the torch module.

Converting a torch network takes seconds (a trace), so the converted model (OpenVINO IR, float32)
is cached per network under :func:`cache_root` (``$FLARESEG_CACHE_DIR``, else
``$XDG_CACHE_HOME/flareseg``, else ``~/.cache/flareseg``), keyed by the network's weights, its
structure and the torch/OpenVINO versions; a fresh process only reads and compiles it (< 1 s).  The
cache is written to a temporary folder and renamed, and read back only if the SHA-256 of its files
matches the record written with them (a truncated or altered file is converted again, never run).
The model folder is never written to.  Nothing here imports OpenVINO until a runtime is built, so
flareseg works without the package.  The runtime table (:mod:`flareseg.inference.runtimes`) calls
:func:`device_problem`, :func:`precision` and :func:`openvino_networks`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from flareseg.devices import BF16_CPU_FLAGS
from flareseg.temp_names import temp_path

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'flareseg[openvino]' (or pip install openvino)"
CACHE_FORMAT = "flareseg-openvino-ir-1"
#: OpenVINO's precision hint for flareseg's network dtype on a CPU (float16 on a CPU runs float32
#: in the torch path too, see flareseg.inference.predictor.choose_dtype)
PRECISION = {"float32": "f32", "float16": "f32", "bfloat16": "bf16"}


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None when the package is missing."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("openvino")
    except PackageNotFoundError:
        return None


def device_problem(device_type: str) -> str | None:
    """Why the OpenVINO runtime cannot run on ``device_type`` here (None: it can): it runs on the
    CPU, and only with the package installed."""
    if device_type != "cpu":
        return (f"inference.runtime=openvino runs the network on the CPU, but inference.device resolved "
                f"to {device_type} (set inference.device=cpu, or runtime=torch on a GPU)")
    if openvino_version() is None:
        return f"inference.runtime=openvino needs the openvino package, which is not installed: {INSTALL_HINT}"
    return None


def precision(name: str, reason: str, native_bf16: bool) -> tuple[str, str]:
    """The network precision OpenVINO runs for flareseg's choice ``name`` (and its ``reason``):
    OpenVINO does not emulate bf16, it silently runs float32 on a CPU without native bf16; say so."""
    if name == "bfloat16" and not native_bf16:
        return "float32", f"{reason}; OpenVINO runs float32 on a CPU without {'/'.join(BF16_CPU_FLAGS)}"
    return name, reason


def openvino_networks(networks: Sequence[torch.nn.Module], in_channels: int,
                      dtype_name: str) -> tuple[list[OpenVINONetwork], str]:
    """The runtime table's factory for OpenVINO: one :class:`OpenVINONetwork` per torch network at
    the precision of flareseg's ``dtype_name``, and where they came from (``"cache"``,
    ``"converted"``, ...; several when the folds differ)."""
    nets = [OpenVINONetwork(n, in_channels, PRECISION[dtype_name]) for n in networks]
    source = ", ".join(sorted({n.source for n in nets}))
    log.info("network runtime openvino (%s, precision %s)", source, PRECISION[dtype_name])
    return nets, source


def cache_root(env: dict[str, str] | None = None) -> Path:
    """Where converted networks are kept: ``$FLARESEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/flareseg``,
    else ``~/.cache/flareseg`` (``env`` defaults to ``os.environ``)."""
    env = os.environ if env is None else env
    if env.get("FLARESEG_CACHE_DIR"):
        return Path(env["FLARESEG_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "flareseg"


def network_key(net: torch.nn.Module, versions: tuple[str, ...]) -> str:
    """Digest (32 hex chars) of a network's structure (its repr: kernel sizes, strides, norms,
    slopes), every parameter and buffer (name, dtype, shape, bytes) and ``versions``."""
    h = hashlib.sha256(CACHE_FORMAT.encode())
    for v in (*versions, type(net).__module__, type(net).__qualname__, repr(net)):
        h.update(str(v).encode() + b"\0")
    for name, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode() + b"\0")
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def downsampling(net: torch.nn.Module, ndim: int = 3) -> tuple[int, ...]:
    """Per-axis product of the strides of the network's (non-transposed) convolutions and pools:
    the smallest input edge the network accepts."""
    total = [1] * ndim
    for m in net.modules():
        if isinstance(m, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            continue
        stride = getattr(m, "stride", None)
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.modules.pooling._MaxPoolNd,
                          torch.nn.modules.pooling._AvgPoolNd)) and stride is not None:
            s = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
            if len(s) == ndim:
                total = [a * int(b) for a, b in zip(total, s)]
    return tuple(total)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verified_ir(folder: Path) -> Path | None:
    """``folder/network.xml`` if the folder holds a complete IR whose files match their recorded
    SHA-256, else None."""
    record = folder / "digest.json"
    try:
        digests = json.loads(record.read_text())
        files = digests["files"]
        if digests.get("format") != CACHE_FORMAT or set(files) != {"network.xml", "network.bin"}:
            return None
        if any(_sha256(folder / name) != sha for name, sha in files.items()):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return folder / "network.xml"


def _convert(net: torch.nn.Module, in_channels: int):
    """The torch network as an OpenVINO model with dynamic batch and spatial size, traced on the
    smallest input it accepts (a full window would trace ~5x slower)."""
    import openvino as ov
    edge = [2 * d for d in downsampling(net)]
    example = torch.zeros(1, in_channels, *edge)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # torch.jit.trace's deprecation notice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return ov.convert_model(net, example_input=example,
                                input=[ov.PartialShape([-1, in_channels, -1, -1, -1])])


def cached_model(net: torch.nn.Module, in_channels: int, root: Path | None = None) -> tuple[Any, str]:
    """``(openvino.Model, how)``: read from the cache when a verified copy exists (``how`` =
    ``"cache"``), else converted (``"converted"``) and stored for the next process; when the cache
    cannot be written the model is used from memory (``"converted, not cached: <why>"``)."""
    import openvino as ov
    root = cache_root() if root is None else root
    key = network_key(net, (openvino_version() or "", torch.__version__, str(in_channels)))
    folder = root / "openvino" / key
    core = ov.Core()
    xml = verified_ir(folder)
    if xml is not None:
        return core.read_model(str(xml)), "cache"
    if folder.exists():
        log.warning("%s: cached OpenVINO network is incomplete or altered; converting again", folder)
    model = _convert(net, in_channels)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with temp_path(folder, "", folder=True) as tmp:      # removed whatever ends the block
            ov.save_model(model, str(tmp / "network.xml"), compress_to_fp16=False)
            files = {n: _sha256(tmp / n) for n in ("network.xml", "network.bin")}
            (tmp / "digest.json").write_text(json.dumps({"format": CACHE_FORMAT, "files": files}))
            if folder.exists():            # a stale or damaged copy: replace it
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(tmp, folder)
            except OSError:                # another process stored it first: keep theirs
                if verified_ir(folder) is None:
                    raise
    except OSError as e:
        why = f"{folder}: {e.strerror or e}"
        log.warning("OpenVINO network not cached (%s); converting again in every process", why)
        return model, f"converted, not cached: {why}"
    return model, "converted"


class OpenVINONetwork:
    """Callable ``(B, C, z, y, x)`` float tensor -> logits tensor, like the torch network it was
    made from, run by OpenVINO on the CPU, one window at a time: a batch of windows is no faster
    per window there (docs/benchmarks/predictor_levers.md), and one window shape means one
    compilation per process (0.2-0.8 s each), whatever batch sizes window skipping produces."""

    def __init__(self, net: torch.nn.Module, in_channels: int, precision: str = "f32",
                 threads: int | None = None, cache: Path | None = None):
        import openvino as ov
        self.model, self.source = cached_model(net.eval(), in_channels, cache)
        self.core = ov.Core()
        self.config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self.requests: dict[tuple[int, ...], Any] = {}

    def _request(self, shape: tuple[int, ...]):
        if shape not in self.requests:
            model = self.model.clone()
            model.reshape({0: list(shape)})
            self.requests[shape] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        return self.requests[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        req = self._request((1, *arr.shape[1:]))
        outs = []
        for window in arr:
            req.infer({0: window[None]})
            # the request's output buffer is reused by its next call: copy it out
            outs.append(np.array(req.get_output_tensor(0).data, dtype=np.float32, copy=True))
        return torch.from_numpy(np.concatenate(outs))
