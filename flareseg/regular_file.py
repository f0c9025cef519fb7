"""Open only regular files, and say what a path is when it cannot be read.

A FIFO named like a scan blocks ``open()`` forever, a device never ends; ``os.path.exists`` calls a
symlink loop "missing".  Every reader of flareseg opens image and data files through
:func:`open_regular`, and names a path it cannot use with :func:`missing_reason` /
:func:`file_kind`: ``symlink loop``, ``broken symlink (target T does not exist)``, ``a FIFO (named
pipe)``, ``a character device`` ...
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import BinaryIO, Iterator

from flareseg.errors import InputError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """``"a regular file"``, ``"a folder"``, ``"a FIFO (named pipe)"``, ... for an ``st_mode``."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def missing_reason(path: os.PathLike | str) -> str | None:
    """Why ``path`` cannot be stat'ed (``does not exist``, ``broken symlink (target T does not
    exist)``, ``symlink loop (...)``, ``cannot be reached (...)``), or None when it can."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (the link resolves to itself)"
        if e.errno == errno.ENOENT:
            if os.path.islink(path):
                return f"broken symlink (target {os.readlink(path)} does not exist)"
            return "does not exist"
        return f"cannot be reached ({e.strerror or e})"
    return None


def describe_kind(path: os.PathLike | str) -> str:
    """``"a FIFO (named pipe)"``, ``"a folder"``, ... for an existing ``path`` (symlinks followed)."""
    return file_kind(os.stat(path).st_mode)


def stat_path(path: os.PathLike | str) -> os.stat_result:
    """``os.stat(path)`` (symlinks followed), or :class:`InputError` saying why there is nothing to
    read (see :func:`missing_reason`)."""
    try:
        return os.stat(path)
    except OSError:
        raise InputError(path, missing_reason(path) or "cannot be reached") from None


def require_regular(path: os.PathLike | str, what: str = "a regular file") -> os.stat_result:
    """Stat ``path`` (see :func:`stat_path`) and refuse anything but a regular file: a FIFO, a
    device or a socket would block or never end when read."""
    st = stat_path(path)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(path, f"is {file_kind(st.st_mode)}, not {what}: only regular files are read")
    return st


@contextlib.contextmanager
def open_regular(path: os.PathLike | str) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading only if it is a regular file, checked before opening (a
    FIFO's open blocks) and again on the open descriptor (non-blocking open, ``fstat``), so a file
    swapped for a FIFO in between is refused too.  Raises :class:`InputError`."""
    require_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise InputError(path, f"unreadable ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(path, f"is {file_kind(st.st_mode)}, not a regular file: only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f
