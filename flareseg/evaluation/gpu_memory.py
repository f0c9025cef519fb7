"""Sampling of used GPU memory (total - free, MB) in a background thread.

Backends, tried in order: NVML through the ``pynvml`` module (package nvidia-ml-py), then the
``nvidia-smi`` command.  Without either (no NVIDIA GPU), :func:`probe_backend` returns ``None``
and the sampler records nothing: callers report "GPU memory unavailable".
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

Reader = Callable[[], float]


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


def probe_backend(index: int = 0) -> tuple[str, Reader] | None:
    """``(name, reader)`` for the first working backend, ``reader()`` -> used MB; or ``None``."""
    for name, make in (("nvml", _nvml_reader), ("nvidia-smi", _smi_reader)):
        reader = make(index)
        if reader is not None:
            return name, reader
    return None


#: sampling cadences: ``fixed`` queries on a fixed schedule (every ``interval`` s, whatever a query
#: takes); ``official`` is the FLARE23 harness (Efficiency.py): query, then sleep ``interval``, so
#: the period is ``interval`` + the query's own time (nvidia-smi: tens of ms).
CADENCES = ("fixed", "official")


def sample_until(reader: Reader, interval: float, cadence: str, samples: list[float],
                 stopped: Callable[[], bool], clock: Callable[[], float],
                 wait: Callable[[float], object]) -> None:
    """Append ``reader()`` to ``samples`` until ``stopped()``, paced by ``cadence`` (see ``CADENCES``).

    ``clock`` (seconds) and ``wait(seconds)`` are injectable so the cadence can be tested without
    real time.  A failed read is skipped (logged at debug level), never fatal.
    """
    if cadence not in CADENCES:
        raise ValueError(f"sampling cadence {cadence!r}: expected one of {', '.join(CADENCES)}")
    due = clock()
    while not stopped():
        try:
            samples.append(reader())
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gpu-memory-sampler")

    def _run(self) -> None:
        sample_until(self.reader, self.interval, self.cadence, self.samples, self._stop.is_set,
                     time.perf_counter, self._stop.wait)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        return self.samples
