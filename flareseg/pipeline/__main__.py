"""`python -m flareseg.pipeline STAGE|all --config C --work W`: run pipeline stages.

`all` runs each stage in its own process (nnU-Net state and memory do not leak between stages)
and stops at the first failure.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import logging
import sys
from pathlib import Path

from flareseg.boundary import call_child
from flareseg.config import Config, ConfigError, load_config
from flareseg.console import log_file_name, set_log_levels, stage_output
from flareseg.io import InputError
from flareseg.pipeline.preflight import preflight
from flareseg.pipeline.registry import DESCRIPTIONS, STAGES, run_stage
from flareseg.pipeline.stage import StageError, StagePaused
from flareseg.pipeline.summary import stage_summary
from flareseg.work_layout import STAGE_NAMES, stage_dir

def _stage_table() -> str:
    """One wrapped entry per stage: number, name, description (from the registry)."""
    import textwrap
    rows = []
    for n, name in STAGE_NAMES.items():
        head = f"  {n} {name:<13} "
        rows.append(textwrap.fill(DESCRIPTIONS[n], width=100, initial_indent=head,
                                  subsequent_indent=" " * len(head)))
    return "\n".join(rows)


HELP = f"""\
Run flareseg pipeline stages on a work folder.

{_stage_table()}

Each stage writes work/stage-N-<name>/manifest.json and is skipped when its config sections and
inputs are unchanged (--force reruns it). A killed stage resumes from its finished steps.
`clean` removes the work folder (`make clean-work`), only when everything in it is the
pipeline's stage folders (or flareseg report's qc/); anything else refuses it, nothing removed.

Several processes per training (stages 1 and 5; docs/scale.md): set train_fine.gpus /
train_coarse.gpus (and nodes) and launch the same command under torchrun, e.g.
  torchrun --nproc-per-node 2 -m flareseg.pipeline 1 --config C --set train_fine.gpus=2

Before any work the run checks what its stages will need: the devices they run on (cuda without a
CUDA device), stage-2's member folders and models; a problem is a config error naming the key.

exit codes: 0 done (or skipped as current); 2 config/usage error (bad key or value, a device or
folder a stage needs is not there, work folder is a file); 3 cannot run (a data folder or an
earlier stage's outputs are missing); 4 an OS error (disk full, read-only, permission denied)
naming the file; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

#: data keys read by stage-1 when data.source is "folders": key -> (required, a folder (else a file))
DATA_KEYS = {"labeled_images": (True, True), "labels": (True, True), "unlabeled_images": (False, True),
             "manifest": (False, False), "label_types": (False, False), "validation_images": (False, True),
             "validation_labels": (False, True)}


def check_data_keys(cfg: Config, src: str = "<config>") -> None:
    """ConfigError when data.source is "folders" but a required folder key is not set."""
    if cfg.data.source != "folders":
        return
    for key, (required, _) in DATA_KEYS.items():
        if required and not getattr(cfg.data, key):
            raise ConfigError(f"{src}: key 'data.{key}' must be set (a folder path) when data.source is "
                              "'folders'")


def missing_data_folders(cfg: Config) -> list[str]:
    """One line per configured data path that does not exist (or is of the wrong kind)."""
    if cfg.data.source != "folders":
        return []
    out = []
    for key, (_, folder) in DATA_KEYS.items():
        value = getattr(cfg.data, key)
        if not value:
            continue
        p = Path(value)
        if not p.exists():
            out.append(f"{p}: data folder does not exist (data.{key})" if folder
                       else f"{p}: file does not exist (data.{key})")
        elif folder and not p.is_dir():
            out.append(f"{p}: not a folder (data.{key})")
        elif not folder and not p.is_file():
            out.append(f"{p}: not a file (data.{key})")
    return out


#: stage -> the training section whose gpus/nodes say how many torchrun processes it runs with
DISTRIBUTED_STAGES = {1: "train_fine", 5: "train_coarse"}
#: stages that split their cases over any number of torchrun processes (one device each)
SHARDED_STAGES = (2,)


def launch_error(cfg: Config, stage: str) -> str | None:
    """Why this launch does not fit the config (one line naming the key), or None.

    Under torchrun (``WORLD_SIZE`` > 1) the stage must train with ``gpus`` x ``nodes`` = ``WORLD_SIZE``
    processes; a config asking for more than one process must be launched by torchrun."""
    from flareseg import distributed as dist
    world = dist.env_world()[2]
    if stage in {str(n) for n in SHARDED_STAGES}:
        return None
    if stage not in {str(n) for n in DISTRIBUTED_STAGES}:
        if world > 1:
            return (f"stage {stage} runs as one process; WORLD_SIZE={world} (torchrun) is for stages "
                    f"{', '.join(map(str, sorted([*DISTRIBUTED_STAGES, *SHARDED_STAGES])))}: "
                    "run it without torchrun")
        return None
    sec = DISTRIBUTED_STAGES[int(stage)]
    tc = getattr(cfg, sec)
    want = tc.gpus * tc.nodes
    if want != world:
        how = ("launch it with `torchrun --nproc-per-node {g} --nnodes {n}{r} -m flareseg.pipeline {s} ...`"
               .format(g=tc.gpus, n=tc.nodes, s=stage,
                       r=f" --rdzv-backend c10d --rdzv-endpoint {tc.rendezvous}" if tc.rendezvous else ""))
        return (f"key '{sec}.gpus'={tc.gpus} x '{sec}.nodes'={tc.nodes} = {want} processes, but this "
                f"launch has WORLD_SIZE={world}: " + (how if want > 1 else "set them to the torchrun launch"))
    if tc.nodes > 1 and not tc.rendezvous:
        return f"key '{sec}.rendezvous' must name the torchrun rendezvous host:port when '{sec}.nodes' > 1"
    return None


def stages_to_run(cfg: Config, work: Path, stage: str, force: bool) -> list[int]:
    """The stages a run of ``stage`` (a number or ``all``) will execute: for ``all`` every stage
    from the first one that is not current (a rerun stage makes the later ones rerun too)."""
    wanted = sorted(STAGES) if stage == "all" else [int(stage)]
    for i, n in enumerate(wanted):
        if force or not STAGES[n].is_current(cfg, work):
            return wanted[i:]
    return []


def _prefixed(n: int, e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg if msg.startswith(f"stage-{n}") else f"stage-{n}: {msg}"


def main(argv: list[str] | None = None) -> int:
    """Run a stage (or all); its exit code.  Ctrl-C (130), SIGTERM (143) and an OSError no stage
    handled (4) end it with one line, not a traceback (:mod:`flareseg.boundary`)."""
    from flareseg.boundary import run_at_boundary
    return run_at_boundary(lambda: _main(argv), "python -m flareseg.pipeline")


def _clean(work: Path) -> int:
    """``clean``: remove the work folder if everything in it is the pipeline's (or flareseg report's),
    else exit 2 with one line naming what is not (:mod:`flareseg.pipeline.remove_work`)."""
    from flareseg.pipeline.remove_work import remove_work
    from flareseg.write_guard import UnsafeOutput
    try:
        removed = remove_work(work)
    except UnsafeOutput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"removed {work} ({', '.join(e.name for e in removed)})" if removed else f"{work}: nothing to remove")
    return 0


def _main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting collapse throughput when two torch processes share
    # the cores (epochs 10x slower); passive waiting costs nothing measurable on a quiet machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(prog="python -m flareseg.pipeline", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", help="stage number 1-6, 'all', or 'clean' (remove the work folder, only if "
                                 "everything in it is the pipeline's)")
    p.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="YAML config")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: config's work_dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train_fine.epochs=2 (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun even if the stage is current")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show everything on the terminal: debug logging and other packages' output "
                        "(nnU-Net's plans, per-epoch text, ...); without it that goes to the stage's log file")
    p.add_argument("-q", "--quiet", action="store_true", help="terminal: warnings, errors and results only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    set_log_levels(args.verbose, args.quiet)   # other packages' INFO (NumExpr, nnU-Net) only with -v
    if args.stage == "clean" and args.work is not None:   # the config only names a work folder
        return _clean(args.work)
    try:
        cfg = load_config(args.config, args.overrides)
        check_data_keys(cfg, str(args.config))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    work = args.work or Path(cfg.work_dir)
    if args.stage == "clean":
        return _clean(work)
    if work.exists() and not work.is_dir():
        print(f"{work}: work folder is a file, not a folder (--work / work_dir)", file=sys.stderr)
        return 2
    if args.stage not in ("all", *map(str, STAGE_NAMES)):
        print(f"unknown stage {args.stage!r}: use 1-6, all or clean", file=sys.stderr)
        return 2
    if args.stage in ("all", "1") and (args.force or not STAGES[1].is_current(cfg, work)):
        missing = missing_data_folders(cfg)
        if missing:
            print(f"stage-1 cannot run: {missing[0]}", file=sys.stderr)
            return 3
    bad_launch = launch_error(cfg, args.stage) if args.stage != "all" else None
    if bad_launch:
        print(f"config error: {bad_launch}", file=sys.stderr)
        return 2
    try:   # every device, member folder and model this run will need, before any work
        preflight(cfg, stages_to_run(cfg, work, args.stage, args.force), str(args.config), work)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.stage == "all":
        if any(getattr(cfg, s).gpus * getattr(cfg, s).nodes > 1 for s in DISTRIBUTED_STAGES.values()):
            print("config error: 'all' runs every stage as one process; with train_fine/train_coarse "
                  "gpus or nodes > 1 run the stages one by one, the training stages under torchrun "
                  "(docs/scale.md)", file=sys.stderr)
            return 2
        for n in sorted(STAGES):
            cmd = [sys.executable, "-m", "flareseg.pipeline", str(n), "--config", str(args.config),
                   "--work", str(work)] + sum((["--set", o] for o in args.overrides), [])
            cmd += ["--force"] * args.force + ["-v"] * args.verbose + ["-q"] * args.quiet
            print(f"==> stage-{n} ({STAGE_NAMES[n]})", flush=True)
            rc = call_child(cmd)   # a Ctrl-C reaches the stage, which removes its temps
            if rc != 0:
                print(f"stage-{n} failed (exit {rc}); fix it and rerun: finished stages are skipped",
                      file=sys.stderr)
                return rc
        from flareseg.pipeline.summary import run_summary
        from flareseg.report.qc import build_qc_report
        from flareseg.write_guard import UnsafeOutput
        try:
            build_qc_report(work)
        except UnsafeOutput as e:   # e.g. a work/qc/index.html report did not write: the stages are done
            print(f"QC page not written: {e}", file=sys.stderr)
        print(run_summary(work))
        return 0
    n = int(args.stage)
    from flareseg import distributed as dist
    if dist.launched():   # a training's collectives time out after its dist_timeout_min
        tc = getattr(cfg, DISTRIBUTED_STAGES[n]) if n in DISTRIBUTED_STAGES else None
        dist.init_from_env(tc.device if tc else cfg.inference.device, tc.dist_timeout_min if tc else None)
    log_file = stage_log(cfg, work, n, args.force)
    if log_file is not None and dist.is_main() and not args.quiet:
        print(f"stage-{n} ({STAGE_NAMES[n]}): {'log' if args.verbose else 'full output'} in {log_file}",
              file=sys.stderr, flush=True)
    output = (stage_output(log_file, args.verbose, args.quiet, title=" ".join(sys.argv))
              if log_file is not None else contextlib.nullcontext())
    try:
        with output:
            man = run_stage(n, cfg, work, force=args.force)
    except StagePaused as e:
        print(_prefixed(n, e))
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (StageError, InputError) as e:   # missing inputs of an earlier stage or of the data
        print(_prefixed(n, e), file=sys.stderr)
        return 3
    except dist.RankFailed as e:            # rank 0 reported the error itself
        print(_prefixed(n, e), file=sys.stderr)
        return 1
    except Exception:                       # unexpected: the traceback follows, the log has the rest
        if log_file is not None and not args.verbose:
            print(f"stage-{n} failed; the output of nnU-Net and other packages is in {log_file}",
                  file=sys.stderr, flush=True)
        raise
    finally:
        dist.shutdown()
    state = "skipped (current)" if man.get("skipped") else "done"
    if not man.get("skipped") and not args.quiet:
        for line in stage_summary(man):
            print(line, file=sys.stderr)
    print(f"stage-{n} ({STAGE_NAMES[n]}) {state}: {work / f'stage-{n}-{STAGE_NAMES[n]}' / 'manifest.json'}")
    return 0


def stage_log(cfg: Config, work: Path, n: int, force: bool) -> Path | None:
    """This process's log file for stage ``n`` (``work/stage-N-<name>/logs/stage.log``), or None
    when the stage will not run (current, or an earlier stage's outputs are missing: it says so)."""
    from flareseg import distributed as dist
    st = STAGES[n]
    if not force and st.is_current(cfg, work):
        return None
    if any(not (stage_dir(work, u) / "manifest.json").exists() for u in st.reads):
        return None
    return stage_dir(work, n) / "logs" / log_file_name(dist.rank() if dist.launched() else 0)


if __name__ == "__main__":
    sys.exit(main())
