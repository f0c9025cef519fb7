"""The process boundary of flareseg's command lines (``flareseg``, ``python -m flareseg.pipeline``):
a signal or an OS error that no command handled becomes one line on stderr and a documented exit
code, never a traceback (``-v`` logs the traceback at DEBUG).

* SIGINT (Ctrl-C) -> ``<prog>: interrupted``, exit :data:`EXIT_INTERRUPTED` (130, the shell's
  128 + 2); SIGTERM -> ``<prog>: terminated``, exit :data:`EXIT_TERMINATED` (143).  Both unwind
  the stack as an exception, so every :func:`flareseg.io.atomic_path` removes its temporary file
  and no half-written file gets a real name.
* an ``OSError`` (disk full, read-only file system, permission denied, ...) ->
  ``<prog>: <file>: <reason> (<ERRNO>)``, exit :data:`EXIT_OS_ERROR` (4).
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

#: exit code of a run stopped by SIGINT (Ctrl-C)
EXIT_INTERRUPTED = 130
#: exit code of a run stopped by SIGTERM
EXIT_TERMINATED = 143
#: exit code of a run stopped by an operating-system error no command handled (disk full, ...)
EXIT_OS_ERROR = 4


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (unwinds like Ctrl-C)."""


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated()


def _default_sigterm_in_child() -> None:
    """After a fork: a child (multiprocessing pool or data-loader worker) dies on SIGTERM as it
    would without flareseg.  Inheriting the unwinding handler, a worker that ``Pool.terminate()``
    signals while it waits on the task queue's lock raised :class:`Terminated` instead of dying
    and the pool hung in ``terminate`` (seen in nnU-Net's preprocessing under a killed stage)."""
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (so ``finally`` blocks
    and temp-file cleanup run); the previous handler is restored after.  No-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


#: temporary names: flareseg.io.atomic_path's ``.<name>.<host>-<pid>.<random>.tmp<suffix>`` and the
#: ``.<name>.<random>.tmp`` folders that whole-folder writers (export-model) rename into place
_TEMP_NAMES = (re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_-]+-\d+\.[A-Za-z0-9_]+\.tmp"),
               re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$"))


def _real_name(path: str) -> str:
    """``path`` with every temporary file or folder name replaced by the name it was to get."""
    parts = []
    for part in Path(path).parts:
        m = next((m for m in (r.match(part) for r in _TEMP_NAMES) if m), None)
        parts.append(m["name"] if m else part)
    return str(Path(*parts)) if parts else path


def file_being_written(e: BaseException) -> str | None:
    """The file an error without ``filename`` happened on, when the traceback shows it: the
    innermost frame holding an open file object (``f.write`` on a full disk names no file).
    A temporary file of ``atomic_path`` is given by the name it was to get."""
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            name = getattr(value, "name", None) if isinstance(value, io.IOBase) else None
            if isinstance(name, str) and name and not name.startswith("<"):
                return _real_name(name)
    return None


def describe_os_error(e: OSError) -> str:
    """One line: the file(s) the error names (or, failing that, the open file of the innermost
    frame), the reason and the errno name (``ENOSPC`` ...)."""
    name = errno.errorcode.get(e.errno or 0, "")
    reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
    files = [_real_name(os.fsdecode(f)) for f in (e.filename, e.filename2) if f is not None]
    if not files:
        found = file_being_written(e)
        files = [found] if found and found not in reason else []
    if not files:   # e.g. flareseg.io.WriteFailed, whose message names the file already
        return f"{reason} ({name})" if name and name not in reason else reason
    return f"{' -> '.join(files)}: {reason}" + (f" ({name})" if name else "")


def run_at_boundary(fn: Callable[[], int], prog: str) -> int:
    """``fn()``'s exit code, or the documented one when a signal or an OSError ends it (one line
    on stderr naming ``prog``, the file and the reason)."""
    try:
        with sigterm_unwinds():
            return int(fn() or 0)
    except KeyboardInterrupt:
        log.debug("interrupted", exc_info=True)
        _say(f"{prog}: interrupted (SIGINT); files being written were removed, finished ones kept")
        return EXIT_INTERRUPTED
    except Terminated:
        log.debug("terminated", exc_info=True)
        _say(f"{prog}: terminated (SIGTERM); files being written were removed, finished ones kept")
        return EXIT_TERMINATED
    except OSError as e:
        log.debug("OS error", exc_info=True)
        _say(f"{prog}: {describe_os_error(e)}")
        return EXIT_OS_ERROR


def call_child(cmd: list[str], own_s: float = 2.0, grace_s: float = 60.0) -> int:
    """``subprocess.call(cmd)``, except that the child is not killed 0.25 s after a Ctrl-C or
    SIGTERM of this process (as ``subprocess.call`` does) but given the time to remove its
    temporary files: it gets ``own_s`` seconds to end on the signal a terminal sends the whole
    process group, then the signal is passed on (SIGINT / SIGTERM) and it gets ``grace_s`` more
    before it is killed; then the interruption goes on here."""
    import subprocess
    with subprocess.Popen(cmd) as p:
        try:
            return p.wait()
        except BaseException as e:
            sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
            try:
                try:
                    p.wait(timeout=own_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(OSError):
                        p.send_signal(sig)
                    p.wait(timeout=grace_s)
            except BaseException:   # still running, or interrupted again: no more waiting
                p.kill()
            raise


def _say(line: str) -> None:
    """``line`` on stderr, on a line of its own (open progress bars are closed first)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        with contextlib.suppress(Exception):
            bar.close()
    with contextlib.suppress(OSError):   # stderr itself may be gone (a closed pipe)
        print(line, file=sys.stderr, flush=True)
