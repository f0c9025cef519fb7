"""What every benchmark shares: nnU-Net process settings, interleaved timing and the machine line.

Benchmarks run from the repository root as ``python -m bench.NAME`` (the root is then on
``sys.path``, so ``flareseg`` and ``bench._common`` import without path edits).
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

if TYPE_CHECKING:
    import argparse


def nnunet_process(device: str = "cpu", workers: int | None = None, threads: int | None = None,
                   def_n_proc: int | None = None) -> None:
    """nnU-Net's process settings for an in-process benchmark, set before nnU-Net reads them.

    ``device`` "cpu": ``nnUNet_compile=f`` (compiling on the CPU costs minutes that a benchmark
    cannot amortise; on a GPU nnU-Net's default stays).  ``workers``: ``nnUNet_n_proc_DA`` (0 =
    data loading in this process).  ``threads``: torch's CPU thread count.  ``def_n_proc``:
    ``nnUNet_def_n_proc`` unless the caller's environment sets it (stock's logits export sets
    torch's thread count to it; pass ours to compare like with like).  None leaves a setting as is.
    """
    if str(device).split(":")[0] == "cpu":
        os.environ["nnUNet_compile"] = "f"
    if workers is not None:
        os.environ["nnUNet_n_proc_DA"] = str(workers)
    if def_n_proc is not None:
        os.environ.setdefault("nnUNet_def_n_proc", str(def_n_proc))
    if threads is not None:
        import torch
        torch.set_num_threads(threads)


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int,
                reduce: Callable[[list[float]], float] | None = statistics.median,
                rotate: bool = False, self_timed: bool = False
                ) -> dict[str, float] | dict[str, list[float]]:
    """Time each of ``fns`` ``repeats`` times, alternating between them (A B A B ..., so a change of
    machine load hits every contender alike; ``rotate``: the order shifts by one each round, so
    none always runs first).  ``self_timed``: each function returns its own seconds (when it must
    leave set-up or a device sync out of the clock).  Seconds per name, reduced by ``reduce``
    (median by default; None returns every time, in round order, for paired ratios)."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)] if rotate else names
        for name in order:
            t0 = time.perf_counter()
            got = fns[name]()
            times[name].append(float(got) if self_timed else time.perf_counter() - t0)  # type: ignore[arg-type]
    return times if reduce is None else {k: reduce(v) for k, v in times.items()}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the architecture where that is not readable) and
    whether it computes bfloat16 natively (AMX / AVX512-BF16: what ``inference.dtype auto`` needs)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and name in (platform.processor(), platform.machine()):
                name = line.partition(":")[2].strip()
            elif line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    except OSError:
        return name
    native = sorted(flags & {"amx_bf16", "avx512_bf16"})
    return f"{name} ({'/'.join(native) if native else 'no native bf16'})"


def machine_line(device: str | None = None) -> str:
    """One line saying where a benchmark ran: CPU, cores, load, device, Python/numpy/torch versions
    and the thread settings that change timings."""
    import numpy as np
    torch = sys.modules.get("torch")       # only when the benchmark uses it (no import cost otherwise)
    parts = [cpu_model(), f"{os.cpu_count()} CPU cores", f"load {os.getloadavg()[0]:.1f}"]
    if torch is not None:
        parts.append(f"vector ISA {torch.backends.cpu.get_cpu_capability()}")
    if device:
        gpu = None
        if str(device).startswith("cuda") and torch is not None and torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(torch.device(device))
        parts.append(f"device {device}" + (f" ({gpu})" if gpu else ""))
    parts += [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    if torch is not None:
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    parts += [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "nnUNet_n_proc_DA", "nnUNet_def_n_proc")
              if k in os.environ]
    return "machine: " + ", ".join(parts)


#: the command name a bench's reports are recorded under in their folder's ledger
#: (:mod:`flareseg.write_guard`): a bench may replace a report that a bench wrote, nothing else
BENCH = "bench"


def add_overwrite_arg(ap: "argparse.ArgumentParser") -> None:
    """The ``--overwrite`` flag of a bench that writes a report."""
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an existing report file that no bench run recorded writing (a report "
                         "from an older version or a fresh clone, e.g. docs/benchmarks/*.md); a bench's "
                         "own earlier report is replaced without it, any other file is refused")


def write_report(text: str, out: "os.PathLike | str | None", echo: bool = True, overwrite: bool = False) -> None:
    """Print a benchmark's markdown (``echo``) and, with ``out``, write it there (:func:`write_out`)."""
    if echo:
        print(text)
    if out:
        write_out(text, out, overwrite)
        print(f"wrote {out}")


def write_json_report(obj: object, out: "os.PathLike | str | None", overwrite: bool = False) -> None:
    """Write ``obj`` as indented JSON to ``out`` (:func:`write_out`; nothing when ``out`` is None)."""
    if out:
        import json
        from flareseg.io import _json_default      # numpy scalars and arrays as numbers and lists
        write_out(json.dumps(obj, indent=1, default=_json_default) + "\n", out, overwrite)


def write_out(text: str, out: "os.PathLike | str", overwrite: bool = False) -> None:
    """The one way a bench writes a report: atomically (folders created; a killed run leaves the
    previous report, not half of a new one), recorded in the folder's ledger as written by a
    bench, so a rerun replaces its own report and an existing file no bench wrote (someone's notes,
    a checkpoint) is refused unless ``overwrite`` (exit 2, one line).  An OS error (disk full)
    propagates to :func:`run_bench`, which ends the bench with one line and exit 4."""
    from flareseg import write_guard
    from flareseg.io import write_text
    out = Path(out)
    try:
        with write_guard.recording(out.parent, BENCH, overwrite=overwrite):
            write_text(text, out)
    except write_guard.UnsafeOutput as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run_bench(main: "Callable[[], int | None]", name: str) -> int:
    """A bench's process boundary, as the commands' (:func:`flareseg.boundary.run_at_boundary`):
    Ctrl-C, SIGTERM or an OS error nothing handled (disk full, read-only, permission denied) end it
    with one line naming ``bench.<name>`` and the file, and the documented exit code (130/143/4);
    a bad input, setting or output path (flareseg's :class:`~flareseg.errors.InputError`,
    :class:`~flareseg.errors.ConfigError`, :class:`~flareseg.write_guard.UnsafeOutput`: a config
    that is a pipe, an unknown key) with one line and exit 2, as a command's usage error."""
    from flareseg.boundary import run_at_boundary
    from flareseg.errors import ConfigError, InputError
    from flareseg.write_guard import UnsafeOutput

    def guarded() -> int:
        try:
            return int(main() or 0)
        except (InputError, ConfigError, UnsafeOutput) as e:
            print(f"bench.{name}: {e}", file=sys.stderr)
            return 2
    return run_at_boundary(guarded, f"bench.{name}")


def refuse_input_outputs(outputs: Mapping[str, "os.PathLike | str | None"],
                         reads: Iterable["os.PathLike | str | None"] = (), model: "os.PathLike | str | None" = None,
                         folders: Iterable["os.PathLike | str | None"] = (), overwrite: bool = False) -> None:
    """Exit 2 with one line when a report path (``outputs``: option -> path) is an input file,
    lands inside an input folder, or is an existing file that no bench run wrote (its folder's
    ledger has no unchanged record of it; ``overwrite`` allows that last one).  Inputs: ``reads``
    (files; a folder among them counts as an input folder), the ``model`` folder and ``folders``
    (other folders the bench reads: a work dir, an image folder; they need not exist yet), their
    files included; None entries are skipped.  The commands' write guard
    (:func:`flareseg.write_guard.check_plan`).  Call it before any work."""
    from flareseg.write_guard import UnsafeOutput, WritePlan, check_plan, input_files
    reads = [Path(r) for r in reads if r is not None]
    dirs = [Path(f) for f in (model, *folders) if f is not None] + [r for r in reads if r.is_dir()]
    files = input_files(dict.fromkeys([*reads, *dirs]))       # a folder among reads once
    names = {Path(model): "model folder"} if model is not None else {}
    for flag, out in outputs.items():
        if out is None:
            continue
        out = Path(out)
        try:
            check_plan(WritePlan(BENCH, out.parent, [out], reads=files, input_folders=dirs, overwrite=overwrite,
                                 flag=flag, input_names=names), probe=False)
        except UnsafeOutput as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
