"""``flareseg SUBCOMMAND`` imports only that subcommand's module (a cold predict pays for no other
command's imports); the command table names exactly what the modules register."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

from flareseg.cli import COMMAND_MODULES, COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]


def test_command_table_is_what_the_modules_register():
    registered = {}
    for mod in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(mod).register(sub)
        registered.update({name: mod for name in sub.choices})
    assert registered == COMMANDS


def test_a_subcommand_parser_holds_that_command_and_help_holds_all():
    def names(argv):
        p = build_parser(argv)
        return set(next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices)
    assert names(["-q", "evaluate", "--pred", "p"]) == {"evaluate", "efficiency"}
    assert names(["--help"]) == names([]) == names(["no-such-command"]) == set(COMMANDS)


def test_predict_process_does_not_import_other_commands():
    code = ("import sys\nfrom flareseg.cli import main\n"
            "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m in %r))" % (COMMAND_MODULES,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout.strip().splitlines()[-1]
    assert out == str(["flareseg.inference.commands"]), out
