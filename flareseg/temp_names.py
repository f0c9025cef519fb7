"""Names of the temporary files every flareseg write goes through (``.<name>.<host>-<pid>.<random>.tmp<suffix>``).

One small module below both :mod:`flareseg.io` (which writes them) and :mod:`flareseg.write_guard`
(which must tell them from a user's files), so the two do not import each other.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Iterator

#: a temp's name: the real name, the writing host and its process id
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp")


@functools.lru_cache(maxsize=None)
def writer_host() -> str:
    """This machine as written into temp-file names: the host name (characters other than letters,
    digits and ``-`` made ``_``) plus the PID namespace where Linux tells it, so that containers
    sharing a host name (``--net=host``) but not their process ids never judge each other's temps."""
    host = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())[:40] or "host"
    with contextlib.suppress(OSError):
        host += f"_ns{os.stat('/proc/self/ns/pid').st_ino}"
    return host


def temp_prefix(dest: Path) -> str:
    """The prefix of this process's temps for ``dest`` (:func:`create_temp` adds the random part)."""
    return f".{dest.name}.{writer_host()}-{os.getpid()}."


def create_temp(dest: Path, suffix: str, folder: bool = False) -> Iterator[Path]:
    """Create an empty temp for ``dest`` (mode 0600), yielding its name *before* creating it.

    A generator: the caller stores the yielded name, then advances it once to create the file.  So
    the caller knows the name at every point where the file may exist, and a Ctrl-C that lands
    just after the file's creation still finds it to remove (``tempfile.mkstemp`` returns the name
    only after creating the file: a signal in between left an orphan temp).  A name taken already
    is skipped for the next one.  ``folder``: an empty folder (mode 0700) instead of a file."""
    for _ in range(1000):
        tmp = dest.parent / f"{temp_prefix(dest)}{secrets.token_hex(6)}.tmp{suffix}"
        yield tmp
        try:
            if folder:
                os.mkdir(tmp, 0o700)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return
        except FileExistsError:
            continue
    raise FileExistsError(f"{dest.parent}: no free temp name for {dest.name}")


def check_writable(folder: os.PathLike | str) -> None:
    """Raise OSError unless a file can be created in ``folder`` (an existing folder): creates and
    removes an empty temp named like the writes' temps, so a killed probe is cleaned like them.
    Asks the file system itself, which permission bits cannot answer (root, read-only mounts, ACLs)."""
    tmp = None
    try:
        for tmp in create_temp(Path(folder) / "write-probe", ""):
            pass
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
