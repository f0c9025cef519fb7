"""Read and write nnU-Net checkpoints safely: no code runs on load, no half-written file on a kill.

**Loading.**  ``torch.load(weights_only=False)`` unpickles whatever a file holds, so a downloaded
model folder could run code on ``flareseg predict``.  :func:`load_checkpoint` uses
``weights_only=True`` with an allow-list, scoped to the call, of exactly what nnU-Net v2
checkpoints and our ``.rng`` files hold besides tensors and plain containers: numpy scalars
(nnU-Net logs pseudo-Dice as ``np.float32``), numpy arrays (numpy's random state is a ``uint32``
array) and plain numeric numpy dtypes.  Both numpy 2 (``numpy._core``) and numpy 1
(``numpy.core``) module names are accepted, so checkpoints written by either load.  A file that
needs anything else is refused (:class:`UntrustedCheckpoint`, naming the type and ``--trust-model``);
``trusted=True`` is the explicit opt-in to plain unpickling.  An unreadable file (truncated, not a
checkpoint) is a :class:`CorruptCheckpoint`.

**Saving.**  :func:`write_checkpoint` writes the checkpoint (and its ``.rng`` companion) to
temporary files that are renamed into place only when complete; with ``keep_previous`` the pair it
replaces becomes ``checkpoint_previous.pth`` (+ ``.rng``), so a damaged latest file always has a
good predecessor to fall back to.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from flareseg.io import InputError, atomic_path

LATEST = "checkpoint_latest.pth"
PREVIOUS = "checkpoint_previous.pth"
FINAL = "checkpoint_final.pth"
RNG_SUFFIX = ".rng"
TRUST_HINT = "pass --trust-model if you trust this folder"

#: numpy dtypes whose arrays/scalars are plain numbers (object, string, void dtypes are not here)
_NUMERIC_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                   np.uint64, np.float16, np.float32, np.float64)


def _safe_globals() -> list:
    """The allow-list: numpy scalar/array reconstruction, ``np.dtype`` and the numeric dtype classes.

    Found by saving real checkpoints (nnU-Net's trainer through ``FlareSegTrainer``, and
    ``write_model_folder``) and loading them with ``weights_only=True``: torch names
    ``numpy._core.multiarray.scalar``, ``numpy.dtype`` and ``numpy.dtypes.Float32DType`` (logged
    pseudo-Dice), ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtypes.UInt32DType`` (numpy's random state in ``.rng``).  The other numeric dtype
    classes are listed because which width a logged number has depends on the nnU-Net version."""
    try:
        from numpy._core import multiarray
    except ImportError:      # numpy < 2
        from numpy.core import multiarray
    out: list = [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype]
    # numpy 1.x pickles name the same functions numpy.core.multiarray.*
    out += [(multiarray.scalar, "numpy.core.multiarray.scalar"),
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    out += [type(np.dtype(t)) for t in _NUMERIC_DTYPES]
    return out


class CorruptCheckpoint(InputError):
    """The file is not a readable checkpoint (truncated, empty, not a torch file)."""


class UntrustedCheckpoint(InputError):
    """The checkpoint needs a type outside the allow-list to be unpickled."""

    def __init__(self, path: os.PathLike | str, needs: str):
        self.needs = needs
        super().__init__(path, f"untrusted checkpoint: needs {needs}; {TRUST_HINT}")


#: how torch's weights-only unpickler names what it refused (a global, a blocked module's global,
#: an object of a class it may not build, a function it may not call, a module to import first)
_NEEDS = [re.compile(p) for p in (r"Unsupported global: GLOBAL ([\w.]+)", r"unsupported GLOBAL ([\w.]+) whose",
                                  r"but got <class '([\w.]+)'>", r"unrecognized function (\S+)",
                                  r"``([\w.]+)`` must be imported")]


def _needed_type(msg: str) -> str | None:
    """The type a failed weights-only load names (``None`` when the failure is not about types,
    e.g. an unknown opcode in a damaged file)."""
    for pattern in _NEEDS:
        m = pattern.search(msg)
        if m:
            return m.group(1)
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def load_checkpoint(path: os.PathLike | str, trusted: bool = False, map_location: Any = "cpu",
                    mmap: bool = False) -> Any:
    """Load a checkpoint (or ``.rng``) file.  ``mmap``: map the tensors' storage instead of reading
    it (cheap, for looking at shapes; zip-format files only, others are read).

    ``trusted=False`` (default): tensors, plain containers and the numpy allow-list only; anything
    else raises :class:`UntrustedCheckpoint` without running any of the file's code.
    ``trusted=True``: plain unpickling (only for folders whose source you trust).
    Unreadable files raise :class:`CorruptCheckpoint`; a missing file :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist" if not path.exists() else "is not a file")
    damage = _structural_damage(path)
    if damage:
        raise CorruptCheckpoint(path, f"corrupt checkpoint ({damage})")
    mmap = bool(mmap) and zipfile.is_zipfile(path)
    try:
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        needs = None if trusted else _needed_type(str(e))
        if needs is not None:
            raise UntrustedCheckpoint(path, needs) from None
        raise CorruptCheckpoint(path, f"corrupt checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, KeyError, IndexError,
            TypeError, AttributeError, ImportError) as e:
        # truncated zip ("failed finding central directory"), empty file (EOFError), bad data;
        # with trusted=True also a pickle naming code that no longer exists
        raise CorruptCheckpoint(path, f"corrupt checkpoint ({_first_line(e)})") from None


def _structural_damage(path: Path) -> str | None:
    """A readable description of damage visible without unpickling (empty, truncated zip)."""
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return f"truncated: {size} bytes, the archive's directory is missing"
    return None


def rng_path(checkpoint: os.PathLike | str) -> Path:
    """The random-state companion of a checkpoint (``checkpoint_latest.pth.rng``)."""
    return Path(str(checkpoint) + RNG_SUFFIX)


def write_checkpoint(dest: os.PathLike | str, write: Callable[[str], None], rng_state: dict | None = None,
                     keep_previous: bool = False) -> None:
    """Write a checkpoint atomically: ``write(tmp_path)`` produces the file, ``rng_state`` (if given)
    goes to ``dest + '.rng'``; both are renamed into place only once both are complete.

    ``keep_previous``: the pair being replaced becomes ``checkpoint_previous.pth`` (+ ``.rng``) in
    the same folder first.  A kill at any point leaves at least one complete checkpoint; the
    ``.rng`` files carry the epoch of their checkpoint, so a mismatched pair is detectable.
    """
    dest = Path(dest)
    rng_dest = rng_path(dest)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(dest))              # renamed last (exits last)
        tmp_rng = stack.enter_context(atomic_path(rng_dest)) if rng_state is not None else None
        with _write_errors_as_oserror(dest):
            write(str(tmp))
        if tmp_rng is not None:
            with _write_errors_as_oserror(rng_dest):
                torch.save(rng_state, tmp_rng)
        if keep_previous:
            prev = dest.with_name(PREVIOUS)
            if dest.is_file():
                _replace_or_remove(rng_dest, rng_path(prev))
                os.replace(dest, prev)
        elif rng_state is None:
            # an old companion must not be taken for this checkpoint's random state
            with contextlib.suppress(FileNotFoundError):
                rng_dest.unlink()
    # ExitStack exits in reverse: the .rng is renamed into place before the checkpoint


def _replace_or_remove(src: Path, dest: Path) -> None:
    if src.is_file():
        os.replace(src, dest)
    else:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()


def save_checkpoint(obj: Any, dest: os.PathLike | str) -> Path:
    """``torch.save`` through a temporary file renamed into place (model folders, ``.rng`` files)."""
    with atomic_path(dest) as tmp, _write_errors_as_oserror(dest):
        torch.save(obj, tmp)
    return Path(dest)


@contextlib.contextmanager
def _write_errors_as_oserror(dest: os.PathLike | str):
    """torch's zip writer reports a full disk or a file-size limit as a ``RuntimeError``
    ("iostream error", "unexpected pos"): re-raise it as the ``OSError`` it is, naming ``dest``."""
    try:
        yield
    except RuntimeError as e:
        raise OSError(errno.EIO, f"checkpoint could not be written ({_first_line(e)}; is the disk full?)",
                      str(dest)) from None
