"""Sampling of used GPU memory (total - free, MB) in a background thread.

Backends, tried in order: NVML through the ``pynvml`` module (package nvidia-ml-py, the ``gpu``
extra), then the ``nvidia-smi`` command.  Without either (no NVIDIA GPU), :func:`probe_backend`
returns ``None`` and the sampler records nothing: callers report "GPU memory unavailable".

Which card: NVML and ``nvidia-smi --id`` number the cards physically and ignore
``CUDA_VISIBLE_DEVICES``, while a measured process's ``cuda:k`` is the k-th entry of that variable,
whose numbers follow ``CUDA_DEVICE_ORDER`` (fastest first unless ``PCI_BUS_ID``; asked from the
CUDA driver, :func:`cuda_order_uuids`).
:func:`visible_card` maps one to the other (entries: physical indices, ``GPU-<uuid>`` or
``MIG-<uuid>``, as CUDA reads them), so the card sampled is the card the process runs on; the
backend names it (:class:`Card`: name, physical index, UUID) for the report.  A MIG instance
maps to its card, and the card's used memory is sampled (all its instances, as total - free is).

Sample times: :class:`MemorySampler` records when each sample was read; :func:`auc_from_times`
integrates over those real times, which differs from the official ``sum x interval`` when the
queries drift off the interval (a slow ``nvidia-smi``).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable, NamedTuple, Sequence

log = logging.getLogger(__name__)

Reader = Callable[[], float]


class Card(NamedTuple):
    """One GPU as NVML / nvidia-smi list it: physical index, UUID (``GPU-...``), product name."""
    index: int
    uuid: str
    name: str = ""


class Backend(NamedTuple):
    """A working GPU memory reader: backend name (``nvml``/``nvidia-smi``), ``reader()`` -> used
    MB of ``card``, and the card it reads."""
    name: str
    reader: Reader
    card: Card


def visible_card(visible: str | None, cards: Sequence[tuple[int, str]], ordinal: int = 0,
                 cuda_order: Sequence[str] | None = None) -> tuple[int, str]:
    """``(physical index, uuid)`` of device ``cuda:ordinal`` under ``CUDA_VISIBLE_DEVICES=visible``.

    ``cards``: ``(physical index, uuid)`` of every card (NVML / nvidia-smi order).  ``visible``
    ``None`` (unset): every card, in CUDA's order.  Otherwise comma-separated entries, each a
    device index or a UUID (``GPU-...``/``MIG-...``; a unique prefix is enough, as CUDA accepts;
    a MIG instance maps to the physical index of its card, listed as ``(card index, "MIG-...")``);
    ``cuda:k`` is the k-th entry.  CUDA hides every device from the first entry it cannot
    resolve on, so an entry at or before ``ordinal`` that names no card is an error.  Raises
    ``ValueError`` naming the entry and the reason.

    CUDA numbers devices in the order ``CUDA_DEVICE_ORDER`` asks for (``FASTEST_FIRST`` by
    default, ``PCI_BUS_ID`` = NVML's order): ``cuda_order`` is the GPUs' UUIDs in that order
    (:func:`cuda_order_uuids`); ``None`` (unknown) takes NVML's physical order.
    """
    if ordinal < 0:
        raise ValueError(f"device {ordinal}: a device ordinal is >= 0")
    if cuda_order is not None:   # index -> card as CUDA enumerates them
        by_uuid = {c[1].lower(): c for c in cards}
        order = [by_uuid[u.lower()] for u in cuda_order if u.lower() in by_uuid]
        cards = order + [c for c in cards if c not in order]
        rank = {c: k for k, c in enumerate(order)}
    else:
        rank = {c: c[0] for c in cards if not c[1].startswith("MIG-")}
    if visible is None:      # every card (MIG instances are only visible when named)
        gpus = [c for c in cards if not c[1].startswith("MIG-")]
        if ordinal >= len(gpus):
            raise ValueError(f"device {ordinal}: only {len(gpus)} GPU(s) present")
        return tuple(gpus[ordinal])  # type: ignore[return-value]
    entries = [e.strip() for e in visible.split(",")]
    entries = [] if entries == [""] else entries
    if ordinal >= len(entries):
        raise ValueError(f"CUDA_VISIBLE_DEVICES={visible!r}: device {ordinal} not visible "
                         f"({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})")
    chosen: list[tuple[int, str]] = []
    for k, entry in enumerate(entries[:ordinal + 1]):
        where = f"CUDA_VISIBLE_DEVICES={visible!r}: entry {k} {entry!r}"
        if entry.lstrip("+-").isdigit():
            match = [c for c in cards if rank.get(c) == int(entry)]
            if not match:
                what = "physical index" if cuda_order is None else "CUDA index"
                raise ValueError(f"{where}: no GPU with {what} {int(entry)} "
                                 f"(present: {', '.join(str(rank[c]) for c in rank) or 'none'})")
        elif entry.startswith(("GPU-", "MIG-")):
            match = [c for c in cards if c[1].lower().startswith(entry.lower())]
            if not match:
                raise ValueError(f"{where}: no GPU with this UUID (present: "
                                 f"{', '.join(c[1] for c in cards) or 'none'})")
            if len(match) > 1:
                raise ValueError(f"{where}: UUID prefix matches {len(match)} GPUs")
        else:
            raise ValueError(f"{where}: not a GPU index, GPU-<uuid> or MIG-<uuid>")
        if tuple(match[0]) in chosen:
            raise ValueError(f"{where}: names the same GPU as an earlier entry")
        chosen.append(tuple(match[0]))  # type: ignore[arg-type]
    return chosen[ordinal]


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nvml_cards() -> list[Card] | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        cards = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = _text(pynvml.nvmlDeviceGetName(h))
            cards.append(Card(i, _text(pynvml.nvmlDeviceGetUUID(h)), name))
            try:   # MIG instances: CUDA_VISIBLE_DEVICES may name them; their card is sampled
                for k in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                    try:
                        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
                    except pynvml.NVMLError:   # an empty slot
                        continue
                    cards.append(Card(i, _text(pynvml.nvmlDeviceGetUUID(mig)), f"{name} MIG {k}"))
            except pynvml.NVMLError:           # MIG not supported / not enabled
                pass
        return cards
    except Exception as e:  # module missing, no driver
        log.debug("NVML unavailable: %s", e)
        return None


_SMI_GPU = re.compile(r"^GPU (\d+): (.*?) \(UUID: (GPU-[^)\s]+)\)")
_SMI_MIG = re.compile(r"^\s+MIG (\S+)\s+Device\s+\d+: \(UUID: (MIG-[^)\s]+)\)")


def parse_smi_list(text: str) -> list[Card]:
    """Cards of ``nvidia-smi -L`` output: ``GPU <i>: <name> (UUID: GPU-...)`` lines, and the MIG
    instances under a card (``MIG <profile> Device <n>: (UUID: MIG-...)``) with their card's
    physical index (the card whose memory is sampled)."""
    cards: list[Card] = []
    for line in text.splitlines():
        m = _SMI_GPU.match(line)
        if m:
            cards.append(Card(int(m.group(1)), m.group(3), m.group(2).strip()))
            continue
        m = _SMI_MIG.match(line)
        if m and cards:
            parent = next(c for c in reversed(cards) if not c.uuid.startswith("MIG-"))
            cards.append(Card(parent.index, m.group(2), f"{parent.name} MIG {m.group(1)}"))
    return cards


def _smi_cards() -> list[Card] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
        return parse_smi_list(out)
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        log.debug("nvidia-smi unusable: %s", e)
        return None


def list_cards() -> tuple[str, list[Card]] | None:
    """``(backend, cards)`` from NVML, else nvidia-smi; ``None`` without either."""
    for name, lister in (("nvml", _nvml_cards), ("nvidia-smi", _smi_cards)):
        cards = lister()
        if cards:
            return name, cards
    return None


def cuda_context_alive() -> bool:
    """Whether this process has initialised CUDA through torch (a context holding card memory,
    which an efficiency baseline then includes).  Never imports torch itself."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # a torch without CUDA support
        return False


def _nvml_reader(index: int) -> Reader | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as e:  # module missing, no driver, no such device
        log.debug("NVML unavailable: %s", e)
        return None

    def read() -> float:
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return (info.total - info.free) / 2**20
    return read


def _smi_reader(index: int) -> Reader | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    cmd = [exe, f"--id={index}", "--query-gpu=memory.total,memory.free", "--format=csv,noheader,nounits"]

    def read() -> float:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout
        total, free = (float(v) for v in out.strip().splitlines()[0].split(","))
        return total - free  # nvidia-smi reports MiB
    try:
        read()
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as e:
        log.debug("nvidia-smi unusable: %s", e)
        return None
    return read


_CUDA_ORDER_SCRIPT = r"""
import ctypes, sys
cu = ctypes.CDLL("libcuda.so.1")
if cu.cuInit(0) != 0:
    sys.exit(1)
n = ctypes.c_int()
cu.cuDeviceGetCount(ctypes.byref(n))
for i in range(n.value):
    d, u = ctypes.c_int(), (ctypes.c_ubyte * 16)()
    if cu.cuDeviceGet(ctypes.byref(d), i) != 0 or cu.cuDeviceGetUuid(u, d) != 0:
        sys.exit(1)
    h = bytes(u).hex()
    print("GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
"""


def cuda_order_uuids(order: str | None) -> list[str] | None:
    """UUIDs of every GPU in the order CUDA numbers them under ``CUDA_DEVICE_ORDER=order``
    (``None``: CUDA's default, fastest first), or ``None`` without a CUDA driver.

    Asked from the CUDA driver (``cuInit`` and device queries, no context, no GPU memory) in a
    short subprocess with every device visible: a process reads these variables once, at its
    first CUDA call."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    if order:
        env["CUDA_DEVICE_ORDER"] = order
    try:
        p = subprocess.run([sys.executable, "-c", _CUDA_ORDER_SCRIPT], env=env, capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("CUDA device order unavailable: %s", e)
        return None
    uuids = [line.strip() for line in p.stdout.splitlines() if line.startswith("GPU-")]
    return uuids if p.returncode == 0 and uuids else None


def probe_backend(ordinal: int = 0, visible: str | None | bool = True) -> Backend | None:
    """A reader of the card that a process sees as ``cuda:ordinal`` (:class:`Backend`), or ``None``
    without NVML and nvidia-smi.  ``visible``: the ``CUDA_VISIBLE_DEVICES`` value (``True``: this
    process's environment).  Raises ``ValueError`` (:func:`visible_card`) when that names no card."""
    found = list_cards()
    if found is None:
        return None
    if visible is True:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    # numeric entries and the unset variable follow CUDA_DEVICE_ORDER (CUDA: fastest first by default)
    needs_order = visible is None or any(e.strip().lstrip("+-").isdigit() for e in str(visible).split(","))
    order = cuda_order_uuids(os.environ.get("CUDA_DEVICE_ORDER")) if needs_order else None
    index, uuid = visible_card(visible, [(c.index, c.uuid) for c in found[1]], ordinal,  # type: ignore[arg-type]
                               cuda_order=order)
    card = next(c for c in found[1] if c.uuid == uuid)
    for name, make in (("nvml", _nvml_reader), ("nvidia-smi", _smi_reader)):
        reader = make(index)
        if reader is not None:
            return Backend(name, reader, card)
    return None


def auc_from_times(times: Sequence[float], samples: Sequence[float], interval: float) -> float:
    """Area under used memory over time (MB*s) from the real sample times: trapezoids between
    samples, the first and last sample held half an ``interval`` outwards.  Equals the official
    ``sum(samples) x interval`` when the samples are exactly ``interval`` apart."""
    if len(times) != len(samples):
        raise ValueError(f"{len(times)} sample times for {len(samples)} samples")
    if not samples:
        return 0.0
    area = (samples[0] + samples[-1]) * interval / 2
    for t0, t1, a, b in zip(times, times[1:], samples, samples[1:]):
        area += (t1 - t0) * (a + b) / 2
    return area


def mean_period(times: Sequence[float]) -> float | None:
    """Mean seconds between successive samples (``None`` for fewer than two)."""
    return (times[-1] - times[0]) / (len(times) - 1) if len(times) >= 2 else None


#: sampling cadences: ``fixed`` queries on a fixed schedule (every ``interval`` s, whatever a query
#: takes); ``official`` is the FLARE23 harness (Efficiency.py): query, then sleep ``interval``, so
#: the period is ``interval`` + the query's own time (nvidia-smi: tens of ms).
CADENCES = ("fixed", "official")


def sample_until(reader: Reader, interval: float, cadence: str, samples: list[float],
                 stopped: Callable[[], bool], clock: Callable[[], float],
                 wait: Callable[[float], object], times: list[float] | None = None) -> None:
    """Append ``reader()`` to ``samples`` until ``stopped()``, paced by ``cadence`` (see ``CADENCES``),
    and the ``clock()`` when each read began to ``times`` (if given).

    ``clock`` (seconds) and ``wait(seconds)`` are injectable so the cadence can be tested without
    real time.  A failed read is skipped (logged at debug level), never fatal.
    """
    if cadence not in CADENCES:
        raise ValueError(f"sampling cadence {cadence!r}: expected one of {', '.join(CADENCES)}")
    due = clock()
    while not stopped():
        t = clock()
        try:
            samples.append(reader())
            if times is not None:
                times.append(t)
        except Exception as e:  # a failed read must not kill the measurement
            log.debug("GPU memory read failed: %s", e)
        if cadence == "official":
            wait(interval)
        else:
            due += interval
            wait(max(0.0, due - clock()))


class MemorySampler:
    """Calls ``reader()`` every ``interval`` seconds (``cadence`` fixed or official, see ``CADENCES``)
    in a daemon thread between start() and stop()."""

    def __init__(self, reader: Reader, interval: float = 0.1, cadence: str = "fixed"):
        if cadence not in CADENCES:
            raise ValueError(f"sampling cadence {cadence!r}: expected one of {', '.join(CADENCES)}")
        self.reader, self.interval, self.cadence = reader, interval, cadence
        self.samples: list[float] = []
        self.times: list[float] = []     # perf_counter seconds at each sample's read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gpu-memory-sampler")

    def _run(self) -> None:
        sample_until(self.reader, self.interval, self.cadence, self.samples, self._stop.is_set,
                     time.perf_counter, self._stop.wait, self.times)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.samples
