"""Where a cold ``flareseg predict`` spends its time (FLARE times every case as a fresh process).

:func:`process_age_seconds` is the wall time since this process started (Linux: ``/proc``), so the
run report can split a cold run into interpreter start + imports (before the command ran), model
load, the first case's steps (read, resample, windows, export, as :class:`FastPredictor` times
them) and what is left (writing outputs, the report); a setup step between the command's start
and the model load holds torch's import and the checks.
"""
from __future__ import annotations

import os
from typing import Mapping


def process_age_seconds() -> float | None:
    """Seconds since this process was started, or None where ``/proc`` cannot tell (not Linux)."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])   # field 22: starttime, clock ticks after boot
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def cold_breakdown(age_at_command: float | None, age_at_load: float | None, model_load_s: float,
                   first_case_steps: Mapping[str, float] | None, age_now: float | None) -> dict:
    """The cold run in seconds: ``start_and_imports`` (process start until the command began:
    the interpreter and flareseg's command-line imports), ``setup`` (until the model load began:
    torch's import, the checks of inputs, outputs and model folder, the device), ``model_load``,
    the first case's steps (``case_<step>``, FastPredictor's laps) and ``other`` (the rest up to
    ``age_now``: writing outputs and the report).  Ages are seconds since the process started
    (:func:`process_age_seconds`); what cannot be known (no ``/proc``) is None."""
    def r(v: float | None) -> float | None:
        return None if v is None else round(max(0.0, v), 4)

    out: dict = {"start_and_imports": r(age_at_command),
                 "setup": None if age_at_load is None or age_at_command is None else r(age_at_load - age_at_command),
                 "model_load": r(float(model_load_s))}
    steps = dict(first_case_steps or {})
    total_case = float(steps.pop("total", sum(steps.values())))
    out.update({f"case_{k}": r(float(v)) for k, v in steps.items()})
    out["total"] = r(age_now)
    if age_now is not None and age_at_load is not None:
        out["other"] = r(age_now - age_at_load - model_load_s - total_case)
    return out
