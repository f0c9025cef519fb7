"""Efficiency harness: one process per case, as the FLARE23 harness runs one container per case.

Start-up and model loading therefore count.  Per case it records wall seconds, peak resident
memory of the process tree (polled from ``/proc``, MB) and, where an NVIDIA GPU is
visible, used GPU memory (total - free) sampled every ``interval`` seconds: its maximum (MB) and
the area under the memory-time curve (sum of samples x interval, MB*s).  ``sampling="official"``
paces the GPU queries as the FLARE23 harness does (query, then sleep ``interval``: the period is
``interval`` + query time, so a case gets fewer samples); the area still counts each sample as
``interval``, as the harness's ``load_json.py`` does, so it is the official number.  Next to it
``gpu_auc_time_mb_s`` integrates over the samples' real times (trapezoids,
:func:`~flareseg.evaluation.gpu_memory.auc_from_times`): the two agree while the queries keep to
the interval, and a drift (mean period off by more than 10 %) is logged.

The card sampled is the one the command sees as ``cuda:<gpu_index>`` under this process's
``CUDA_VISIBLE_DEVICES`` (mapped to NVML's physical numbering); rows and summary name it
(``gpu_name``, ``gpu_physical_index``, ``gpu_uuid``).  Used memory counts everything on the card,
as the harness's does; the used memory just before each case starts (``gpu_baseline_mb``: other
processes, or a CUDA context of the process running this harness, ``gpu_parent_context``) is
subtracted in ``gpu_max_net_mb`` / ``gpu_auc_net_mb_s``, the case's own share.

Every file goes through the write guard (:mod:`flareseg.write_guard`): before the first case
:func:`efficiency_plan` is checked -- the reports, each case's log and each case's ``{output}``
against every input file and input folder, and against files in ``OUT`` that this harness did not
write (refused unless ``overwrite``).  Reports and logs are written to a temp, verified and renamed
(a case's log appears under its name when the case ends); each is recorded in ``OUT``'s ledger, and
so is a case's output once the command wrote it, so a rerun recognises and replaces its own files.

Command placeholders (replaced inside every argument): ``{input}`` the case's input file,
``{output}`` ``OUT/outputs/<case><suffix>``, ``{case}`` the case name, ``{input_dir}`` a folder
holding only this case's input (link), ``{output_dir}`` ``OUT/outputs``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from flareseg.evaluation import proc_memory
from flareseg.cases import case_name
from flareseg.evaluation.gpu_memory import (CADENCES, Backend, MemorySampler, auc_from_times,
                                            cuda_context_alive, mean_period, probe_backend)
from flareseg import write_guard
from flareseg.io import atomic_path, image_suffix, read_json, write_json, write_text
from flareseg.temp_names import temp_prefix
from flareseg.write_guard import WritePlan, check_plan, input_files

log = logging.getLogger(__name__)

GPU_UNAVAILABLE = "GPU memory unavailable (no NVML and no nvidia-smi)"
#: a mean sampling period further than this fraction off the interval is reported as drift
DRIFT = 0.1
_PROBE = object()
PLACEHOLDERS = ("{input}", "{output}", "{case}", "{input_dir}", "{output_dir}")
#: the write guard's name for this harness (its ledger entries)
EFFICIENCY = "efficiency"
REPORT_FILES = ("efficiency.csv", "efficiency.json")


def _case_files(inp: Path, out: Path, outputs: Path) -> tuple[str, Path, Path, Path]:
    """``(case, log, output, staged input link)`` of input ``inp``."""
    case = case_name(inp)
    return (case, out / "logs" / f"{case}.log", outputs / f"{case}{image_suffix(inp) or '.nii.gz'}",
            out / "inputs" / case / inp.name)


def efficiency_plan(inputs: Sequence[Path], out_dir: os.PathLike | str, outputs_dir: os.PathLike | str | None = None,
                    overwrite: bool = False) -> WritePlan:
    """The :class:`flareseg.write_guard.WritePlan` of a run: the reports, every case's log and
    ``{output}`` (and a staged input link where a file that is not a link stands in its way),
    against every input file (and what its header refers to) and every input folder."""
    out = Path(out_dir)
    outputs = Path(outputs_dir or out / "outputs")
    files = [out / n for n in REPORT_FILES]
    for inp in map(Path, inputs):
        _, log_path, dest, link = _case_files(inp, out, outputs)
        files += [log_path, dest] + ([link] if os.path.lexists(link) and not link.is_symlink() else [])
    folders = list(dict.fromkeys(p if p.is_dir() else p.parent for p in map(Path, inputs)))
    return WritePlan(EFFICIENCY, out, files, reads=input_files(inputs), input_folders=folders, overwrite=overwrite,
                     out_inside_input=True, input_inside_out=True, flag="--out",
                     input_names={f: "--inputs folder" for f in folders})


def adopt_earlier_efficiency(out: Path) -> None:
    """Record as this harness's own what a run wrote before ledgers existed: the reports, and the
    logs and outputs its ``efficiency.json`` lists."""
    if (out / write_guard.LEDGER).exists() or not (out / "efficiency.json").is_file():
        return
    try:
        rows = read_json(out / "efficiency.json")["cases"]
        listed = [Path(r[k]) for r in rows for k in ("log", "output") if r.get(k)]
    except (OSError, ValueError, KeyError, TypeError):
        return
    with write_guard.recording(out, EFFICIENCY):
        write_guard.adopt([out / n for n in REPORT_FILES] + listed, EFFICIENCY)


def _stamp(p: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _stage_input(inp: Path, link: Path) -> None:
    """``link`` -> ``inp`` (the case's ``{input_dir}``), made as a temp link renamed into place
    (a link is not a file of the ledger: one standing there is replaced, a file was planned)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    target = inp.resolve()
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.parent / f"{temp_prefix(link)}{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.symlink_to(target)
        os.replace(tmp, link)   # replaces only a link or a file the plan allowed (efficiency_plan)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def fill_command(template: Sequence[str], values: dict[str, str]) -> list[str]:
    """Replace ``{input}``-style placeholders in each argument (other braces are left alone)."""
    out = []
    for arg in template:
        for key, val in values.items():
            arg = arg.replace("{" + key + "}", val)
        out.append(arg)
    return out


def _run_measured(cmd: list[str], log_path: Path, timeout_s: float | None,
                  interval: float) -> tuple[int, float, float, bool]:
    """Run ``cmd`` in its own session; returns ``(exit code, wall s, peak RSS MB, timed_out)``.

    Peak RSS comes from polling ``/proc`` (see :mod:`proc_memory`); where there is no ``/proc``
    it falls back to ``wait4``'s ``ru_maxrss``, which may include the parent's memory.
    """
    lock, state = threading.Lock(), {"done": False, "timed_out": False}
    with open(log_path, "wb") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        rss = MemorySampler(lambda: proc_memory.tree_memory_mb(proc.pid), interval).start() \
            if proc_memory.available() else None

        def kill() -> None:
            with lock:
                if not state["done"]:
                    state["timed_out"] = True
                    os.killpg(proc.pid, signal.SIGKILL)
        timer = threading.Timer(timeout_s, kill) if timeout_s else None
        if timer:
            timer.start()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        wall = time.perf_counter() - t0
        samples = rss.stop() if rss else []
        with lock:
            state["done"] = True
            _, status, usage = os.wait4(proc.pid, 0)
        if timer:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = max(samples, default=0.0) if rss else usage.ru_maxrss / 1024.0  # Linux: kB
    return proc.returncode, wall, peak, state["timed_out"]


def measure_efficiency(command_template: Sequence[str], inputs: Sequence[Path], out_dir: os.PathLike | str,
                       interval: float = 0.1, timeout_s: float | None = None,
                       gpu_index: int = 0, sampling: str = "fixed",
                       outputs_dir: os.PathLike | str | None = None,
                       backend: Backend | None | object = _PROBE, overwrite: bool = False) -> list[dict]:
    """Run ``command_template`` once per input file and measure it.

    Returns one row per case: ``case, input, output, returncode, timed_out, wall_s, rss_peak_mb,
    gpu_backend, gpu_name, gpu_physical_index, gpu_uuid, gpu_parent_context, gpu_baseline_mb,
    gpu_max_mb, gpu_max_net_mb, gpu_auc_mb_s, gpu_auc_time_mb_s, gpu_auc_net_mb_s,
    gpu_period_mean_s, gpu_samples, log`` (GPU fields ``None`` when no GPU memory reading is
    possible).  ``gpu_index``: the device ordinal the command uses (``cuda:<gpu_index>``);
    ``backend``: a :class:`~flareseg.evaluation.gpu_memory.Backend` to sample instead of probing
    (``None``: no GPU sampling).  Raises ``ValueError`` when ``CUDA_VISIBLE_DEVICES`` names no card.  Outputs go to ``outputs_dir`` (default
    ``out_dir/outputs``), the command's stdout+stderr to ``out_dir/logs/<case>.log``.  ``sampling``: GPU query cadence,
    ``fixed`` or ``official`` (:data:`~flareseg.evaluation.gpu_memory.CADENCES`).
    Before the first case the write guard (:func:`efficiency_plan`) raises
    :class:`flareseg.write_guard.UnsafeOutput` for a file that is an input, lands in an input
    folder, or would replace a file this harness did not write (unless ``overwrite``).
    """
    if sampling not in CADENCES:
        raise ValueError(f"sampling {sampling!r}: expected one of {', '.join(CADENCES)}")
    if not command_template:
        raise ValueError("empty command template")
    if not any(ph in arg for arg in command_template for ph in PLACEHOLDERS):
        log.warning("command has no {input}/{output} placeholder: every case runs the same command")
    out = Path(out_dir)
    inputs = [Path(p) for p in inputs]
    if out.is_dir():
        adopt_earlier_efficiency(out)
    check_plan(efficiency_plan(inputs, out, outputs_dir, overwrite))   # before any file or folder is made
    outputs = Path(outputs_dir or out / "outputs")
    with write_guard.recording(out, EFFICIENCY, overwrite):
        write_guard.compact(out)
        for d in (outputs, out / "logs", out / "inputs"):
            d.mkdir(parents=True, exist_ok=True)
        return _measure_cases(command_template, inputs, out, outputs, interval, timeout_s, gpu_index, sampling,
                              backend)


def _measure_cases(command_template: Sequence[str], inputs: list[Path], out: Path, outputs: Path,
                   interval: float, timeout_s: float | None, gpu_index: int, sampling: str,
                   backend: Backend | None | object) -> list[dict]:
    if backend is _PROBE:
        backend = probe_backend(gpu_index)
    if backend is None:
        log.info(GPU_UNAVAILABLE)
    else:
        card = backend.card  # type: ignore[union-attr]
        log.info("sampling GPU memory of %s (physical index %s, %s) via %s", card.name or "GPU",
                 card.index, card.uuid, backend.name)  # type: ignore[union-attr]
    parent_context = cuda_context_alive()
    if backend is not None and parent_context:
        log.warning("this process holds a CUDA context: its memory is in every case's GPU baseline "
                    "(subtracted in gpu_max_net_mb / gpu_auc_net_mb_s)")
    rows = []
    for inp in tqdm(inputs, desc="efficiency", unit="case", disable=len(inputs) < 2):
        case, log_path, dest, link = _case_files(inp, out, outputs)
        in_dir = link.parent
        _stage_input(inp, link)
        dest_before = _stamp(dest)
        cmd = fill_command(command_template, {"input": str(inp), "output": str(dest), "case": case,
                                              "input_dir": str(in_dir), "output_dir": str(outputs)})
        row: dict = {"case": case, "input": str(inp), "output": str(dest),
                     "gpu_backend": backend.name if backend else None,  # type: ignore[union-attr]
                     "gpu_name": backend.card.name if backend else None,  # type: ignore[union-attr]
                     "gpu_physical_index": backend.card.index if backend else None,  # type: ignore[union-attr]
                     "gpu_uuid": backend.card.uuid if backend else None,  # type: ignore[union-attr]
                     "gpu_parent_context": parent_context if backend else None,
                     "gpu_baseline_mb": None, "gpu_max_mb": None, "gpu_max_net_mb": None,
                     "gpu_auc_mb_s": None, "gpu_auc_time_mb_s": None, "gpu_auc_net_mb_s": None,
                     "gpu_period_mean_s": None, "gpu_samples": 0}
        sampler, baseline = None, None
        if backend is not None:
            try:
                baseline = backend.reader()  # type: ignore[union-attr]
                row["gpu_baseline_mb"] = round(baseline, 1)
            except Exception as e:  # transient read failure: the sampler still runs
                log.debug("GPU baseline read failed: %s", e)
            sampler = MemorySampler(backend.reader, interval, sampling).start()  # type: ignore[union-attr]
        with atomic_path(log_path) as tmp_log:   # the log appears under its name when the case ends
            try:
                rc, wall, rss, timed_out = _run_measured(cmd, tmp_log, timeout_s, min(interval, 0.05))
            except OSError as e:  # command not found / not executable
                rc, wall, rss, timed_out = 127, 0.0, 0.0, False
                tmp_log.write_text(f"cannot start {cmd[0]!r}: {e}\n")
        after = _stamp(dest)
        if after is not None and after != dest_before and dest.is_file() and not dest.is_symlink():
            write_guard.record(dest, command=EFFICIENCY)   # the command wrote it: ours on a rerun
        samples = sampler.stop() if sampler else []
        if samples:
            row.update(gpu_samples=len(samples), **gpu_figures(samples, sampler.times, interval, baseline))
            period = row["gpu_period_mean_s"]
            if period is not None and abs(period - interval) > DRIFT * interval:
                log.warning("case %s: GPU memory sampled every %.3f s on average, not %.3f s: official AUC "
                            "(sum x interval) %.1f MB*s, over the real sample times %.1f MB*s", case, period,
                            interval, row["gpu_auc_mb_s"], row["gpu_auc_time_mb_s"])
        row.update(returncode=rc, timed_out=timed_out, wall_s=round(wall, 3), rss_peak_mb=round(rss, 1),
                   log=str(log_path))
        if rc != 0:
            log.error("case %s: command exited with %s%s (log: %s)", case, rc,
                      " after timeout" if timed_out else "", log_path)
        rows.append(row)
    return rows


def gpu_figures(samples: list[float], times: list[float], interval: float,
                baseline: float | None) -> dict:
    """A case's GPU figures from its samples (MB) and their times (s): the official ``max`` and
    ``sum x interval`` AUC, the AUC over the real times, the mean period, and with a ``baseline``
    (used MB before the case started) the maximum and time-based AUC above it."""
    period = mean_period(times)
    out = {"gpu_max_mb": round(max(samples), 1), "gpu_auc_mb_s": round(sum(samples) * interval, 1),
           "gpu_auc_time_mb_s": round(auc_from_times(times, samples, interval), 1),
           "gpu_period_mean_s": None if period is None else round(period, 4),
           "gpu_max_net_mb": None, "gpu_auc_net_mb_s": None}
    if baseline is not None:
        net = [max(0.0, v - baseline) for v in samples]
        out.update(gpu_max_net_mb=round(max(net), 1), gpu_auc_net_mb_s=round(auc_from_times(times, net, interval), 1))
    return out


def _finished(row: dict) -> bool:
    """A case that ran to the end: exit code 0 and not killed by the timeout."""
    return row.get("returncode") == 0 and not row.get("timed_out")


def summarize(rows: list[dict], command_template: Sequence[str] = (), interval: float = 0.1,
              sampling: str = "fixed") -> dict:
    """Totals and means over cases; GPU entries say ``unavailable`` when nothing was sampled.

    Means and maxima (time, memory, GPU) are over the cases that finished (exit 0, no timeout):
    a fast crash would lower the seconds per case.  Failed and timed-out cases are counted and
    listed apart (``failed_cases``: case, exit code, timed out, seconds; ``failed_wall_s_mean``);
    ``wall_s_total`` is the time of every case."""
    ok_rows = [r for r in rows if _finished(r)]
    bad = [r for r in rows if not _finished(r)]

    def vals(key: str) -> list[float]:
        return [r[key] for r in ok_rows if r.get(key) is not None]

    def mean(key: str) -> float | None:
        v = vals(key)
        return round(sum(v) / len(v), 1) if v else None

    walls, rss, gmax, gauc = vals("wall_s"), vals("rss_peak_mb"), vals("gpu_max_mb"), vals("gpu_auc_mb_s")
    first = next((r for r in rows if r.get("gpu_backend")), {})
    backend = first.get("gpu_backend")
    bad_walls = [r["wall_s"] for r in bad if r.get("wall_s") is not None]
    return {
        "n_cases": len(rows),
        "n_ok": len(ok_rows),
        "n_failed": len(bad),
        "n_timed_out": sum(1 for r in bad if r.get("timed_out")),
        "failed_cases": [{"case": r.get("case"), "returncode": r.get("returncode"),
                          "timed_out": bool(r.get("timed_out")), "wall_s": r.get("wall_s")} for r in bad],
        "failed_wall_s_mean": round(sum(bad_walls) / len(bad_walls), 3) if bad_walls else None,
        "means_over": "finished cases (exit 0, no timeout)",
        "command": list(command_template),
        "interval_s": interval,
        "sampling": sampling,
        "wall_s_total": round(sum(r["wall_s"] for r in rows if r.get("wall_s") is not None), 3),
        "wall_s_mean": round(sum(walls) / len(walls), 3) if walls else None,
        "wall_s_max": max(walls) if walls else None,
        "rss_peak_mb_max": max(rss) if rss else None,
        "gpu_memory": backend if gmax else GPU_UNAVAILABLE,
        "gpu_max_mb": max(gmax) if gmax else None,
        "gpu_auc_mb_s_mean": round(sum(gauc) / len(gauc), 1) if gauc else None,
        "gpu_auc_time_mb_s_mean": mean("gpu_auc_time_mb_s"),
        "gpu_card": {"name": first.get("gpu_name"), "physical_index": first.get("gpu_physical_index"),
                     "uuid": first.get("gpu_uuid")} if first else None,
        "gpu_parent_context": first.get("gpu_parent_context"),
        "gpu_baseline_mb_max": max(vals("gpu_baseline_mb"), default=None),
        "gpu_max_net_mb": max(vals("gpu_max_net_mb"), default=None),
        "gpu_auc_net_mb_s_mean": mean("gpu_auc_net_mb_s"),
    }


CSV_FIELDS = ("case", "returncode", "timed_out", "wall_s", "rss_peak_mb", "gpu_backend", "gpu_name",
              "gpu_physical_index", "gpu_uuid", "gpu_parent_context", "gpu_baseline_mb", "gpu_max_mb",
              "gpu_max_net_mb", "gpu_auc_mb_s", "gpu_auc_time_mb_s", "gpu_auc_net_mb_s", "gpu_period_mean_s",
              "gpu_samples", "input", "output", "log")


def write_efficiency_reports(rows: list[dict], summary: dict, out_dir: os.PathLike | str,
                             overwrite: bool = False) -> dict[str, Path]:
    """Write ``efficiency.csv`` (one row per case) and ``efficiency.json`` (summary + rows) atomically,
    recorded in the folder's ledger; a report there that this harness did not write raises
    :class:`flareseg.write_guard.UnsafeOutput` (unless ``overwrite``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS} for r in rows)
    out = Path(out_dir)
    with write_guard.recording(out, EFFICIENCY, overwrite):
        return {"csv": write_text(buf.getvalue(), out / "efficiency.csv"),
                "json": write_json({"summary": summary, "cases": rows}, out / "efficiency.json")}
