"""Harness for the bad-input matrix: run a user-facing command on a bad input and check the contract.

The contract (docs/reliability.md) for every command that reads user files or config:

* the exit code is the documented one (0 done, 1 some cases failed and the rest were done,
  2 usage/config error found before any work, 3 cannot run: inputs of an earlier stage missing);
* a one-line message names the file or key and says why (stderr or an ERROR/WARNING log record);
* no traceback (no exception escapes, no log record carries one);
* the good cases of the batch are done;
* no partial or temporary file is left in the output or input folders;
* the inputs are byte-identical afterwards (md5 before/after).
"""
from __future__ import annotations

import hashlib
import logging
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pytest


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str
    records: list[logging.LogRecord]

    @property
    def lines(self) -> list[str]:
        """Every line a user sees: stderr, stdout and logged warnings/errors."""
        logged = [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]
        return [ln for text in (self.stderr, self.stdout) for ln in text.splitlines()] + \
            [ln for msg in logged for ln in msg.splitlines()]


def md5_tree(paths: Iterable[os.PathLike | str]) -> dict[str, str]:
    """md5 of every file under ``paths`` (files or folders; symlinks recorded by their target)."""
    out: dict[str, str] = {}
    for root in paths:
        root = Path(root)
        files = [root] if not root.is_dir() else sorted(p for p in root.rglob("*"))
        for p in files:
            if p.is_symlink() and not p.exists():
                out[str(p)] = "broken-link->" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.md5(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "dir"
    return out


def leftovers(paths: Iterable[os.PathLike | str]) -> list[str]:
    """Temporary or partial files (``*.tmp*``, ``*.partial``) under ``paths``."""
    bad = []
    for root in paths:
        root = Path(root)
        if not root.is_dir():
            continue
        for p in root.rglob("*"):
            if ".tmp" in p.name or p.name.endswith(".partial"):
                bad.append(str(p))
    return sorted(bad)


def run_command(main: Callable[[Sequence[str]], int], argv: Sequence[str], capsys, caplog) -> Outcome:
    """Run ``main(argv)`` in-process; an escaping exception fails the test with its traceback."""
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        try:
            rc = main(list(map(str, argv)))
        except SystemExit as e:  # argparse errors exit 2 with a usage line, which is fine
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            pytest.fail(f"{' '.join(map(str, argv))}: exception escaped\n{traceback.format_exc()}")
    cap = capsys.readouterr()
    return Outcome(int(rc or 0), cap.out, cap.err, list(caplog.records))


def check_contract(out: Outcome, *, rc: int, names: Sequence[str], reason: str,
                   inputs_before: dict[str, str], inputs: Iterable[os.PathLike | str],
                   outputs: Iterable[os.PathLike | str] = (), done: Iterable[os.PathLike | str] = ()) -> None:
    """Assert the bad-input contract on one command's outcome (see the module docstring)."""
    shown = "\n".join(out.lines)
    assert out.rc == rc, f"exit {out.rc}, expected {rc}; output:\n{shown}"
    assert "Traceback (most recent call last)" not in out.stderr + out.stdout, shown
    assert not [r for r in out.records if r.exc_info], "a log record carries a traceback"
    hits = [ln for ln in out.lines if all(n in ln for n in names) and reason.lower() in ln.lower()]
    assert hits, f"no single line names {list(names)} with reason {reason!r}; output:\n{shown}"
    inputs = list(inputs)
    assert md5_tree(inputs) == inputs_before, "an input changed"
    assert leftovers(list(outputs) + inputs) == [], "temporary files left behind"
    for p in done:
        assert Path(p).exists(), f"the good case's output {p} is missing: the batch did not go on"


def tiny_ct(path, shape=(16, 40, 36), spacing=(1.5, 1.5, 2.5), dtype=None, fill=None):
    """A small CT for the predict rows: air with a soft-tissue block (``fill``: every voxel that value)."""
    import numpy as np
    import SimpleITK as sitk
    arr = np.full(shape, -1000, dtype=dtype or np.int16)
    arr[:, 8:32, 6:30] = 60
    if fill is not None:
        arr[...] = fill
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def ct_folder(tmp, *names):
    """``tmp/in`` holding one :func:`tiny_ct` per file name."""
    inp = Path(tmp) / "in"
    inp.mkdir()
    for n in names:
        tiny_ct(inp / n)
    return inp


def check_predict_row(main, r: dict, argv: Sequence[str], model, tmp_path, capsys, caplog) -> Outcome:
    """Run ``flareseg predict ARGV --device cpu -q`` for a matrix row ``r`` (``inputs``, ``rc``,
    ``names``, ``reason``, optional ``outputs``/``done``) and check the contract; a refusal
    (exit 2) must leave ``tmp_path`` exactly as it was (not even the output folder created)."""
    inputs = [*r["inputs"], model]
    before, everything = md5_tree(inputs), md5_tree([tmp_path])
    out = run_command(main, ["predict", *argv, "--device", "cpu", "-q"], capsys, caplog)
    check_contract(out, rc=r["rc"], names=r["names"], reason=r["reason"], inputs_before=before,
                   inputs=inputs, outputs=r.get("outputs", ()), done=r.get("done", ()))
    if r["rc"] == 2:
        assert md5_tree([tmp_path]) == everything
    return out
