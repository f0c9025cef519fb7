"""Names of the temporary files every flareseg write goes through (``.<name>.<host>-<pid>.<random>.tmp<suffix>``).

One small module below both :mod:`flareseg.io` (which writes them) and :mod:`flareseg.write_guard`
(which must tell them from a user's files), so the two do not import each other.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import tempfile
from pathlib import Path

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
    """The prefix of this process's temps for ``dest`` (``mkstemp`` adds the random part)."""
    return f".{dest.name}.{writer_host()}-{os.getpid()}."


def check_writable(folder: os.PathLike | str) -> None:
    """Raise OSError unless a file can be created in ``folder`` (an existing folder): creates and
    removes an empty temp named like the writes' temps, so a killed probe is cleaned like them.
    Asks the file system itself, which permission bits cannot answer (root, read-only mounts, ACLs)."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(Path(folder) / "write-probe"), suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(tmp)
