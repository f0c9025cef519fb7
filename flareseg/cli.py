"""`flareseg` command line: one subcommand per module that registers itself here."""
from __future__ import annotations

import argparse
import os
import importlib
import sys

from flareseg.console import set_log_levels   # log levels live one floor down (also the pipeline's)

# Each module defines ``register(subparsers)``; the parser it adds sets ``func(args) -> int``.
# subcommand -> the module that registers it: a run imports only its own command's module (a cold
# ``flareseg predict`` does not import evaluation, cleaning, report, ...; tests/test_cli_lazy.py
# checks the table against what the modules register)
COMMANDS: dict[str, str] = {
    "import": "flareseg.data.import_cli",
    "predict": "flareseg.inference.commands",
    "statistics": "flareseg.inference.statistics_cli",
    "evaluate": "flareseg.evaluation.commands",
    "efficiency": "flareseg.evaluation.commands",
    "clean": "flareseg.cleaning.commands",
    "phantoms": "flareseg.data.commands",
    "report": "flareseg.report.commands",
    "export-model": "flareseg.nnunet.export_cli",
}
COMMAND_MODULES: list[str] = list(dict.fromkeys(COMMANDS.values()))

DESCRIPTION = """\
flareseg: train and ship a universal abdominal organ + pan-cancer CT segmentation model
from partially labeled data (FLARE23), on top of nnU-Net v2.

Pipeline: stage-1 import + fine model, stage-2 pseudo labels, stage-3 tumor-object pool,
stage-4 label cleaning, stage-5 coarse model with CutMix, stage-6 fast predictor + evaluation.
Run `make demo` for the whole pipeline on synthetic phantoms; `flareseg SUBCOMMAND --help`
explains each command's inputs and outputs.
"""


def _modules_for(argv: list[str] | None) -> list[str]:
    """The command modules a parse of ``argv`` needs: the named subcommand's alone (the first word
    that is not a flag; the top-level flags take no values), every module for help, no subcommand
    or an unknown one (argparse then lists them all)."""
    if argv is not None:
        word = next((a for a in argv if not a.startswith("-")), None)
        if word in COMMANDS:
            return [COMMANDS[word]]
    return COMMAND_MODULES


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``flareseg`` parser; with ``argv``, holding only what parsing ``argv`` needs."""
    p = argparse.ArgumentParser(prog="flareseg", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and other packages' INFO lines (nnU-Net, NumExpr, ...)")
    p.add_argument("-q", "--quiet", dest="quiet_all", action="store_true",
                   help="no INFO lines (warnings, errors and results only)")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for mod in _modules_for(argv):
        importlib.import_module(mod).register(sub)
    for sp in sub.choices.values():   # -v / -q also after the subcommand: flareseg predict ... -v
        add_verbosity_flags(sp)
    return p


def add_verbosity_flags(p: argparse.ArgumentParser) -> None:
    """``-v`` and ``-q`` on a subcommand's parser, unless it has its own (predict's ``-q`` also
    hides progress bars); given there they count as given before the subcommand."""
    flags = ((("-v", "--verbose"), "verbose", "debug logging, and other packages' INFO lines"),
             (("-q", "--quiet"), "quiet", "no INFO lines (warnings, errors and results only)"))
    for names, dest, text in flags:
        try:
            p.add_argument(*names, dest=dest, action="store_true", default=argparse.SUPPRESS, help=text)
        except argparse.ArgumentError:   # the subcommand defines the flag itself
            pass


def _version() -> str:
    from flareseg import __version__
    return f"flareseg {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; its exit code.  Ctrl-C (130), SIGTERM (143) and an OSError no command
    handled (4: disk full, read-only, permission denied) end it with one line, not a traceback
    (:mod:`flareseg.boundary`; docs/reliability.md lists the codes)."""
    from flareseg.boundary import run_at_boundary
    return run_at_boundary(lambda: _main(argv), "flareseg")


def _main(argv: list[str] | None) -> int:
    # OpenMP threads that spin while waiting collapse throughput when two torch processes share
    # the cores (epochs 10x slower); passive waiting costs nothing measurable on a quiet machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    quiet = bool(args.quiet_all or getattr(args, "quiet", False))
    if quiet and hasattr(args, "quiet"):
        args.quiet = True   # a subcommand with its own -q sees the one given before it too
    set_log_levels(args.verbose, quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
