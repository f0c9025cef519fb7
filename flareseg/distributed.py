"""torch.distributed glue for runs launched by ``torchrun`` (docs/scale.md).

``torchrun`` sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (and the rendezvous) in every process's
environment; :func:`init_from_env` joins the process group (NCCL on CUDA, gloo on the CPU) plus a
gloo group for small control messages (which rank-0 decision the others follow).  Without
``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is a no-op and the run is the plain
single-process one.

Division of labour: rank 0 does all bookkeeping (manifests, step records, checkpoints, planning);
:func:`on_main` runs a function on rank 0 only and hands its result (or its failure) to the
others, which write nothing outside their own logs.
"""
from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
from typing import Any, Callable

log = logging.getLogger(__name__)

#: how long ranks wait for rank 0 (planning/preprocessing a large data set takes hours)
WAIT = datetime.timedelta(hours=int(os.environ.get("FLARESEG_DIST_TIMEOUT_H", "24")))

_control = None   # gloo group for objects (NCCL's object collectives need a device per rank)


class RankFailed(RuntimeError):
    """Rank 0 failed a step the other ranks waited for; the message is rank 0's error."""


def env_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the torchrun environment (``(0, 0, 1)`` without it)."""
    e = os.environ
    return int(e.get("RANK", 0)), int(e.get("LOCAL_RANK", 0)), int(e.get("WORLD_SIZE", 1))


def launched() -> bool:
    """True when started by torchrun with more than one process."""
    return env_world()[2] > 1


def active() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if not active():
        return 0
    import torch.distributed as dist
    return dist.get_rank()


def world_size() -> int:
    if not active():
        return 1
    import torch.distributed as dist
    return dist.get_world_size()


def is_main() -> bool:
    return rank() == 0


def backend_for(device: str) -> str:
    """``nccl`` when the run trains on CUDA (``device`` ``cuda`` or ``auto`` with CUDA), else ``gloo``."""
    import torch
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def die_with_launcher() -> bool:
    """Linux: ask the kernel to SIGKILL this process when its parent (torchrun's agent) dies.

    torchrun starts every rank in a session of its own, so killing the launch's process group
    (a kill -9 of the job, a scheduler killing the launcher) leaves the ranks running: orphans that
    keep training and rotating checkpoints under a rerun (found by the kill/resume test: the rerun
    lost ``checkpoint_latest.pth`` to an orphan's rotation).  Returns whether it is set."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.warning("cannot tie this rank's life to its launcher (prctl failed): after a kill -9 of "
                    "torchrun, kill its ranks too before rerunning")
        return False
    if os.getppid() != parent:        # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def batch_problem(batch_size: int, world: int, key: str) -> str | None:
    """Why a global batch of ``batch_size`` cannot train on ``world`` processes (one line naming
    ``key``, the world size and the fix), or ``None``.  nnU-Net splits the global batch over the
    ranks and needs at least one sample per rank; it asserts this only after rank 0 has planned and
    preprocessed everything, so launches check it first."""
    if batch_size >= world:
        return None
    return (f"key '{key}' = {batch_size} is smaller than the world size {world} (processes of this "
            f"training launch; each needs at least one sample): set --set {key}={world} (or more), "
            f"or launch at most {batch_size} processes")


def minutes(value: float | None) -> datetime.timedelta:
    """``value`` minutes (fractions allowed) as a timedelta; ``None`` -> :data:`WAIT`."""
    if value is None:
        return WAIT
    if not float(value) > 0:
        raise ValueError(f"process-group timeout must be > 0 minutes, got {value!r}")
    return datetime.timedelta(minutes=float(value))


def init_from_env(device: str = "auto", timeout_min: float | None = None, init_method: str | None = None) -> bool:
    """Join the torchrun process group (once); returns whether this is a multi-process run.
    Each rank dies with its launcher (:func:`die_with_launcher`).

    Two groups: the default one (NCCL on CUDA, gloo on the CPU) carries the training's collectives
    and fails after ``timeout_min`` minutes (``train_*.dist_timeout_min``; ``None``: :data:`WAIT`),
    so a dead rank frees the GPUs; a gloo control group (:func:`broadcast`, :func:`gather`,
    :func:`barrier`, :func:`on_main`) waits up to :data:`WAIT` for rank 0's planning and
    preprocessing.  ``init_method``: torch's (default ``env://``, what torchrun sets up)."""
    global _control
    if not launched():
        return False
    die_with_launcher()
    import torch
    import torch.distributed as dist
    if active():
        return True
    backend = backend_for(device)
    r, local, world = env_world()
    if backend == "nccl":
        torch.cuda.set_device(local)
    train = minutes(timeout_min)
    extra = {} if init_method is None else {"init_method": init_method, "rank": r, "world_size": world}
    dist.init_process_group(backend, timeout=train, **extra)
    _control = dist.new_group(backend="gloo", timeout=WAIT) if train != WAIT or backend != "gloo" \
        else dist.group.WORLD
    log.info("rank %d of %d (local rank %d), backend %s, collectives time out after %s (control group %s)",
             r, world, local, backend, train, WAIT)
    return True


def shutdown() -> None:
    global _control
    if active():
        import torch.distributed as dist
        dist.destroy_process_group()
    _control = None


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` unchanged without a process group)."""
    if not active():
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if not active():
        return [obj]
    import torch.distributed as dist
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_control)
    return out


def barrier() -> None:
    if active():
        import torch.distributed as dist
        dist.barrier(group=_control)


def on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only; every rank returns its result.  When it raises, rank 0 re-raises
    and the other ranks raise :class:`RankFailed` with the same message (nobody waits forever)."""
    if not active():
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException as e:
            broadcast(("error", f"{type(e).__name__}: {e}"))
            raise
        return broadcast(("ok", result))[1]
    status, value = broadcast(None)
    if status == "error":
        raise RankFailed(f"rank 0 failed: {value}")
    return value
