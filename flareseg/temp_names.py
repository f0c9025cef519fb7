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
import shutil
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
    """The prefix of this process's temps for ``dest`` (:func:`temp_path` adds the random part)."""
    return f".{dest.name}.{writer_host()}-{os.getpid()}."


@contextlib.contextmanager
def temp_path(dest: Path, suffix: str, folder: bool = False) -> Iterator[Path]:
    """An empty temp file (mode 0600), or with ``folder`` an empty folder (0700), for ``dest``, named
    like every write's temp; removed when the block ends, whatever ends it (nothing is left to
    remove once the block has renamed it away).

    The name is chosen before the file is created and held here throughout, so a Ctrl-C that lands
    just after the creation still finds it to remove (``tempfile.mkstemp`` returns the name only
    after creating the file: a signal in between left an orphan temp).  A name taken already is
    skipped for the next one."""
    tmp = None
    try:
        for _ in range(1000):
            tmp = dest.parent / f"{temp_prefix(dest)}{secrets.token_hex(6)}.tmp{suffix}"
            try:
                if folder:
                    os.mkdir(tmp, 0o700)
                else:
                    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                break
            except FileExistsError:
                tmp = None          # not ours: never removed here
        else:
            raise FileExistsError(f"{dest.parent}: no free temp name for {dest.name}")
        yield tmp
    finally:
        if tmp is not None and folder:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def check_writable(folder: os.PathLike | str) -> None:
    """Raise OSError unless a file can be created in ``folder`` (an existing folder): creates and
    removes an empty temp named like the writes' temps, so a killed probe is cleaned like them.
    Asks the file system itself, which permission bits cannot answer (root, read-only mounts, ACLs)."""
    with temp_path(Path(folder) / "write-probe", ""):
        pass
