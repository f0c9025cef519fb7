"""Resident memory of a process tree read from ``/proc`` (Linux, no psutil).

``wait4``'s ``ru_maxrss`` is not usable for a child started from a large Python process: Linux
carries the parent's high-water mark across fork/vfork + exec into the child's figure.  Instead
the child and its descendants are polled: ``VmHWM`` (each process's own peak, so the peak of a
long-running process is caught even between polls) and the summed ``VmRSS`` of the tree.
"""
from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def available() -> bool:
    return (PROC / str(os.getpid()) / "status").exists()


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (via ``/proc/PID/task/*/children``, else by scanning ``stat``)."""
    tasks = PROC / str(pid) / "task"
    try:
        out = []
        for t in tasks.iterdir():
            out.extend(int(c) for c in (t / "children").read_text().split())
        return out
    except FileNotFoundError:  # process gone, or kernel without the children file
        pass
    except (OSError, ValueError):
        return []
    kids = []
    for d in PROC.iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _status_kb(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` in kB; zeros for a zombie or vanished process."""
    rss = hwm = 0
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, hwm


def tree_memory_mb(pid: int) -> float:
    """Current memory figure of the tree, MB: max(summed VmRSS, largest single VmHWM)."""
    stats = [_status_kb(p) for p in tree(pid)]
    return max(sum(r for r, _ in stats), max((h for _, h in stats), default=0)) / 1024.0
