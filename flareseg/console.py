"""What a command line shows on the terminal and what goes to a log file.

* :func:`set_log_levels`: flareseg's records at INFO (DEBUG with ``-v``, WARNING with ``-q``),
  other packages' (NumExpr, nnU-Net, matplotlib, ...) only from WARNING unless ``-v``.
* :func:`stage_output`: while a pipeline stage runs without ``-v``, everything third-party goes to
  the stage's log file and the terminal keeps flareseg's own lines.  The redirect is made at the
  process boundary, on file descriptors 1 and 2 (``print`` of nnU-Net, C libraries, worker
  processes all land in the log); Python's ``sys.stderr`` is pointed at the terminal, so progress
  bars (tqdm writes to ``sys.stderr``) and tracebacks stay visible.  Log records go to the file
  (all of them, INFO and up) and, filtered by :class:`OwnLines`, to the terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

#: loggers of other packages that log routine INFO lines (NumExpr's "defaulting to N threads",
#: nnU-Net, matplotlib font scans): shown only with -v
THIRD_PARTY_LOGGERS = ("numexpr", "nnunetv2", "matplotlib", "PIL", "batchgenerators", "torch", "h5py",
                       "urllib3", "acvl_utils", "dynamic_network_architectures")

#: line format of records on the terminal and in log files
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def level_for(verbose: bool = False, quiet: bool = False) -> int:
    """The level of flareseg's own records: DEBUG with ``-v``, WARNING with ``-q``, else INFO."""
    return logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO


def set_log_levels(verbose: bool, quiet: bool = False, fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """Our messages at INFO (DEBUG with ``verbose``, WARNING with ``quiet``); other packages' only
    from WARNING unless ``verbose``.  Every record goes to stderr (stdout holds only a command's
    result lines)."""
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format=fmt)
    logging.getLogger().setLevel(level_for(verbose, quiet))
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def is_own(record: logging.LogRecord) -> bool:
    """Whether a record comes from flareseg (its logger is ``flareseg`` or below, or ``__main__``)."""
    return record.name in ("flareseg", "__main__") or record.name.startswith("flareseg.")


class OwnLines(logging.Filter):
    """Passes flareseg's records from ``level`` up and anyone's errors (the terminal's share)."""

    def __init__(self, level: int = logging.INFO):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= (self.level if is_own(record) else logging.ERROR)


class TerminalFormat(logging.Formatter):
    """``HH:MM:SS message`` for INFO lines; warnings and errors also name their level and logger."""

    def __init__(self):
        super().__init__("%(asctime)s %(message)s", "%H:%M:%S")
        self._loud = logging.Formatter(FORMAT, "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record) if record.levelno <= logging.INFO else self._loud.format(record)


def _is_console(h: logging.Handler) -> bool:
    """Whether ``h`` is a plain stream handler writing to this process's stdout or stderr."""
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return type(h) is logging.StreamHandler and any(h.stream is s for s in streams)


def log_file_name(rank: int = 0) -> str:
    """The log file of a stage process: ``stage.log`` (rank 0), ``stage-rank<R>.log`` (other ranks)."""
    return "stage.log" if rank == 0 else f"stage-rank{rank}.log"


@contextlib.contextmanager
def stage_output(log_file: Path, verbose: bool = False, quiet: bool = False,
                 title: str = "") -> Iterator[Path]:
    """Send this process's output to ``log_file`` (appended) while inside; see the module doc.

    With ``verbose`` nothing is redirected (the terminal shows everything, as before) and the log
    file gets the log records only.  The previous descriptors, ``sys.stderr``, root handlers and
    levels are restored on the way out, also when the block raises."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {n: logging.getLogger(n).level for n in THIRD_PARTY_LOGGERS}
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {title} (pid {os.getpid()})\n".encode())
    log_stream = open(os.dup(fd), "a", buffering=1, encoding="utf-8", errors="replace")
    to_file = logging.StreamHandler(log_stream)
    to_file.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    to_file.setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        root.addHandler(to_file)
        try:
            yield log_file
        finally:
            root.removeHandler(to_file)
            log_stream.close()
            os.close(fd)
        return
    saved_fds = os.dup(1), os.dup(2)
    terminal = open(os.dup(2), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                    errors="replace")
    to_terminal = logging.StreamHandler(terminal)
    to_terminal.setFormatter(TerminalFormat())
    to_terminal.addFilter(OwnLines(level_for(False, quiet)))
    saved_stdout, saved_stderr = sys.stdout, sys.stderr
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout, sys.stderr = log_stream, terminal   # print() -> the log, whatever sys.stdout was
    # the console handlers (basicConfig's) give way to ours; others (a test's capture) stay
    root.handlers = [h for h in saved_handlers if not _is_console(h)] + [to_file, to_terminal]
    root.setLevel(logging.INFO)
    for n in THIRD_PARTY_LOGGERS:   # their INFO lines belong in the log file; torch keeps its
        if n != "torch":            # own handlers (torch._logging), so its level stays
            logging.getLogger(n).setLevel(logging.NOTSET)
    logging.captureWarnings(True)   # warnings.warn -> the log file, not the terminal
    try:
        yield log_file
    finally:
        logging.captureWarnings(False)
        for s in (sys.stdout, terminal, log_stream):
            with contextlib.suppress(Exception):
                s.flush()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for f in (*saved_fds, fd):
            os.close(f)
        sys.stdout, sys.stderr = saved_stdout, saved_stderr
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        for n, lv in saved_levels.items():
            logging.getLogger(n).setLevel(lv)
        terminal.close()
        log_stream.close()
