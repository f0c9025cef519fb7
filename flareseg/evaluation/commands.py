"""`flareseg evaluate` and `flareseg efficiency` subcommands."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path

from flareseg.config import ConfigError, load_config
from flareseg.evaluation.efficiency import (GPU_UNAVAILABLE, measure_efficiency, summarize,
                                            write_efficiency_reports)
from flareseg.cases import list_cases
from flareseg.regular_file import missing_reason
from flareseg.evaluation.evaluate import evaluate_folders
from flareseg.evaluation.gpu_memory import CADENCES, probe_backend
from flareseg.evaluation.metrics import RULES
from flareseg.evaluation.report import format_table
from flareseg.io import InputError
from flareseg.labels import CLASS_NAMES, FOREGROUND
from flareseg.write_guard import UnsafeOutput, check_plan

log = logging.getLogger(__name__)

EVALUATE_HELP = """\
Score predictions against reference labels with the FLARE23 rules: DSC and NSD per case and
class (NSD tolerances in mm from evaluation.nsd_tolerance_mm); both empty -> 1, one empty -> 0;
aorta, IVC and esophagus scored only on the reference's axial slices of that class; NSD = 0 when
DSC < evaluation.nsd_min_dsc; spacing from the reference; the prediction must lie on the
reference's grid.  Cases are matched by file name (image suffix and a trailing _0000 removed).

--rules flare23-official reproduces the official FLARE23 script (JunMa11/FLARE, FLARE23/) to its
4 decimals: aorta/IVC/esophagus on the reference's slices [z_lower:z_upper] (top slice left out;
a reference on one slice, where the official script crashes, is scored on that slice), the
official surfel-area table, and a prediction with the reference's shape but another header
spacing/origin/direction is scored on the reference's grid (with a warning) instead of refused.
NSD threshold: evaluation.nsd_min_dsc=0.1 (2023 challenge, default) or 0.2 (current script).
See docs/evaluation.md.

inputs : --pred and --gt, two folders of label files (.nii.gz/.nii/.mha/.nrrd) or two files
outputs: a table on stdout; with --out: per_case.csv (case,class,name,dsc,nsd), summary.json
         (per-class means, organ mean 1-13, tumor, overall, missing/extra/errors), summary.txt
exit   : 0 when every reference case was scored; 1 when a prediction is missing, unreadable,
         on another grid or holds values outside 0..14 (the other cases are still scored and
         reported); 2 on a usage/config error before any work (missing folder, --gt without
         references, --classes outside 1..14, --out a file, an input folder or inside one, an
         existing report file evaluate did not write (unless --overwrite), an --out that cannot be
         created or written into, bad config key); 4 when writing a report fails (disk full):
         one line naming the file, no half-written report

examples:
  flareseg evaluate --pred work/stage-6-ship/predictions --gt data/val/labels --out reports/val
  flareseg evaluate --pred pred/case_01.nii.gz --gt labels/case_01.nii.gz
  flareseg evaluate --pred P --gt G --set evaluation.nsd_min_dsc=0.2 --classes 1 2 3 13
  flareseg evaluate --pred P --gt G --rules flare23-official --set evaluation.nsd_min_dsc=0.2
"""

EFFICIENCY_HELP = """\
Time a prediction command the way the FLARE23 efficiency harness does: one process per case (so
start-up and model loading count), used GPU memory (total - free, NVML or nvidia-smi) sampled
every --interval seconds (--sampling fixed: on a fixed schedule; --sampling official: as the
FLARE23 harness, query then sleep --interval, so the period is interval + query time; the
AUC counts each sample as --interval s either way, as the harness does; gpu_auc_time_mb_s
integrates over the real sample times, a drift is warned about), peak RSS of the process.
Without a GPU it still times and reports RSS and says GPU memory is unavailable.

The card sampled is the command's cuda:<--gpu-index> under the current CUDA_VISIBLE_DEVICES
(indices, GPU-<uuid> or MIG-<uuid>), mapped to NVML's physical numbering; the report names it
(name, physical index, uuid).  The used memory before each case (gpu_baseline_mb) is subtracted
in gpu_max_net_mb / gpu_auc_net_mb_s.

placeholders in the command: {input} (case file), {output} (OUT/outputs/<case><suffix>), {case},
{input_dir} (a folder holding only this case), {output_dir} (OUT/outputs)
outputs: OUT/efficiency.csv (case, returncode, wall_s, rss_peak_mb, gpu_max_mb, gpu_auc_mb_s, ...),
         OUT/efficiency.json (summary + rows), OUT/outputs/, OUT/logs/<case>.log
exit   : 0 when every case's command exited 0, 1 when some case's command failed (each one
         reported, the others still run), 2 on a usage error before any case runs (no command,
         missing input, --out a file, --interval/--timeout <= 0, --gpu-index < 0,
         CUDA_VISIBLE_DEVICES naming no GPU, an output that is an input or would replace a file
         efficiency did not write: --overwrite replaces those)

examples:
  flareseg efficiency --inputs data/val/images --out reports/eff -- python predict.py {input} {output}
  flareseg efficiency --inputs imgs --out eff -- docker run --gpus all -v {input_dir}:/workspace/inputs \\
      -v {output_dir}:/workspace/outputs flareseg:latest
"""


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("evaluate", help="FLARE23 DSC/NSD of predictions against reference labels",
                       description=EVALUATE_HELP, formatter_class=fmt)
    p.add_argument("-i", "--pred", required=True, type=Path, help="folder (or file) of predicted label maps")
    p.add_argument("--gt", required=True, type=Path, help="folder (or file) of reference label maps")
    p.add_argument("-o", "--out", type=Path, help="folder for per_case.csv, summary.json, summary.txt")
    p.add_argument("--config", type=Path, help="YAML config (its evaluation: section is used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. evaluation.nsd_min_dsc=0.2 (repeatable)")
    p.add_argument("--classes", type=int, nargs="+", default=list(FOREGROUND),
                   help="classes to score (default: 1..14)")
    p.add_argument("--rules", choices=RULES, default=None,
                   help="flareseg (default) or flare23-official: the official script's numbers "
                        "exactly (overrides evaluation.rules)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace report files in --out that evaluate did not write (refused by default)")
    p.add_argument("--missing-zero", action="store_true",
                   help="score missing predictions as 0 (challenge rule) instead of leaving them out")
    p.set_defaults(func=run_evaluate)

    q = sub.add_parser("efficiency", help="time a prediction command per case: wall s, GPU memory, RSS",
                       description=EFFICIENCY_HELP, formatter_class=fmt)
    q.add_argument("-i", "--inputs", required=True, type=Path, nargs="+",
                   help="input image files, or folders of them")
    q.add_argument("-o", "--out", required=True, type=Path, help="folder for outputs, logs and reports")
    q.add_argument("--interval", type=float, default=0.1, help="GPU memory sampling interval, s (default 0.1)")
    q.add_argument("--sampling", choices=CADENCES, default="fixed",
                   help="GPU query cadence: fixed schedule (default) or official (sleep --interval "
                        "after each query, as the FLARE23 harness)")
    q.add_argument("--timeout", type=float, default=None, help="kill a case after this many seconds")
    q.add_argument("--gpu-index", type=int, default=0,
                   help="device the command uses, as cuda:N under CUDA_VISIBLE_DEVICES (default 0)")
    q.add_argument("--overwrite", action="store_true",
                   help="replace files in --out (reports, logs, outputs) that efficiency did not write "
                        "(refused by default)")
    q.add_argument("command", nargs=argparse.REMAINDER,
                   help="the command, after `--`, with {input}/{output} placeholders")
    q.set_defaults(func=run_efficiency)


def check_evaluate_args(args: argparse.Namespace) -> None:
    """Usage errors found before any work (InputError/ConfigError naming the option or path)."""
    bad = [c for c in args.classes if c not in FOREGROUND]
    if bad:
        raise ConfigError(f"--classes: {bad[0]} is not a FLARE23 class to score (valid: "
                          f"{', '.join(f'{c} {CLASS_NAMES[c]}' for c in FOREGROUND)})")
    args.classes = list(dict.fromkeys(args.classes))
    for opt, p in (("--pred", args.pred), ("--gt", args.gt)):
        if not p.exists():
            raise InputError(p, f"{missing_reason(p)} ({opt})")  # does not exist, symlink loop, ...
    if args.pred.is_file() != args.gt.is_file():
        raise InputError(args.pred, f"--pred and --gt must both be folders or both be files "
                                    f"(--gt {args.gt} is {'a file' if args.gt.is_file() else 'a folder'})")
    if args.out is not None:   # the write guard: every report file against every input file
        from flareseg.evaluation.report import report_plan
        check_plan(report_plan(args.pred, args.gt, args.out, getattr(args, "overwrite", False)))


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides).evaluation
        if args.rules is not None:
            cfg = dataclasses.replace(cfg, rules=args.rules)
        check_evaluate_args(args)
        res = evaluate_folders(args.pred, args.gt, cfg, args.out, classes=args.classes,
                               missing_as_zero=args.missing_zero, overwrite=args.overwrite)
    except (ConfigError, InputError, UnsafeOutput) as e:
        log.error("%s", e)
        return 2
    print(format_table(res), end="")
    if args.out:
        print(f"reports written to {args.out}")
    return 0 if res.ok else 1


def _expand_inputs(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(list_cases(p).values())
        elif p.exists():
            out.append(p)
        else:
            raise InputError(p, "does not exist")
    return out


def run_efficiency(args: argparse.Namespace) -> int:
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        log.error("no command given: put it after `--`, e.g. -- python predict.py {input} {output}")
        return 2
    for opt, value, ok, need in (("--interval", args.interval, args.interval > 0, "> 0"),
                                 ("--timeout", args.timeout, args.timeout is None or args.timeout > 0, "> 0"),
                                 ("--gpu-index", args.gpu_index, args.gpu_index >= 0, ">= 0")):
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            log.error("%s %s: out of range (expected %s)", opt, value, need)
            return 2
    if args.out.exists() and not args.out.is_dir():
        log.error("%s", InputError(args.out, "--out exists and is not a folder"))
        return 2
    try:
        inputs = _expand_inputs(args.inputs)
    except InputError as e:
        log.error("%s", e)
        return 2
    if not inputs:
        log.error("no input images found in %s", ", ".join(map(str, args.inputs)))
        return 2
    try:
        backend = probe_backend(args.gpu_index)
    except ValueError as e:   # CUDA_VISIBLE_DEVICES names no card: the sampled card would be wrong
        log.error("%s", e)
        return 2
    try:   # the write guard refuses before the first case (UnsafeOutput: one line, exit 2)
        rows = measure_efficiency(cmd, inputs, args.out, args.interval, args.timeout, args.gpu_index,
                                  sampling=args.sampling, backend=backend, overwrite=args.overwrite)
    except UnsafeOutput as e:
        log.error("%s", e)
        return 2
    summary = summarize(rows, cmd, args.interval, args.sampling)
    write_efficiency_reports(rows, summary, args.out, overwrite=args.overwrite)
    print(f"{'case':<24} {'rc':>3} {'wall s':>8} {'RSS MB':>8} {'GPU max MB':>11} {'GPU AUC MB*s':>13} "
          f"{'AUC(t) MB*s':>12}")
    for r in rows:
        gm, ga, gt = ("n/a" if r[k] is None else f"{r[k]:.0f}" for k in ("gpu_max_mb", "gpu_auc_mb_s",
                                                                           "gpu_auc_time_mb_s"))
        print(f"{r['case']:<24} {r['returncode']:>3} {r['wall_s']:8.2f} {r['rss_peak_mb']:8.1f} {gm:>11} {ga:>13} "
              f"{gt:>12}")
    if summary["gpu_max_mb"] is None:
        print(GPU_UNAVAILABLE)
    else:
        card = summary["gpu_card"]
        print(f"GPU sampled: {card['name']} (physical index {card['physical_index']}, {card['uuid']}); "
              f"baseline up to {summary['gpu_baseline_mb_max']} MB, net peak {summary['gpu_max_net_mb']} MB")
    print(f"{summary['n_cases']} case(s), {summary['n_failed']} failed, total {summary['wall_s_total']:.2f} s; "
          f"reports in {args.out}")
    return 0 if summary["n_failed"] == 0 else 1
