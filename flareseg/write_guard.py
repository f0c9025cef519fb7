"""One guarded way to write: plan every output, check it against every input, never replace a file
flareseg did not write, record what it wrote, delete only that.

Every writing command (predict, import, clean, evaluate, export-model, phantoms, report) builds a
:class:`WritePlan` -- the output folder, every file it will write, every file it reads (images,
labels, DICOM series files, model files) and the input folders -- and calls :func:`check_plan`
before any work.  The check raises :class:`UnsafeOutput` (one line naming both paths; the commands
exit 2) when

- an output file is an input file: the same path once symlinks are resolved, or the same
  ``(st_dev, st_ino)`` (a hard link or a symlink to an input);
- an output lands directly in an input folder, the output folder is an input folder, lies inside
  one (unless the command allows it, as predict does) or holds one (unless allowed);
- an output would replace an existing file that this folder's ledger does not record as written
  by flareseg (or that changed since: size, mtime or inode differ), unless ``overwrite``;
- two outputs are one file, or the output folder cannot be created or written into (a probe
  temp is created and removed in the nearest existing folder).

The **ledger** ``.flareseg-written.jsonl`` in the output folder lists what flareseg wrote there
(one JSON line per write: path relative to the folder, size, mtime_ns, inode), appended under an
``fcntl`` lock on the folder, so concurrent runs and killed runs keep it consistent.
:func:`flareseg.io.atomic_path` records every file it renames into a folder made active by
:func:`recording`, and refuses there a write onto a file the command did not write
(:func:`check_replace`: the net for outputs no plan names up front); :func:`remove_owned`
deletes a file only when the ledger says we wrote it and it is unchanged.  Folders written before
ledgers existed are recognised by each command's own records and :func:`adopt`-ed once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from flareseg.temp_names import TEMP_RE, check_writable, temp_path

log = logging.getLogger(__name__)

#: the record of what flareseg wrote into a folder (hidden; one JSON object per line)
LEDGER = ".flareseg-written.jsonl"

PathLike = str | os.PathLike


class UnsafeOutput(ValueError):
    """An output that would overwrite an input or a file flareseg did not write, or an output
    folder that cannot be used (one line naming the paths)."""


def _resolved(p: PathLike) -> Path | None:
    try:
        return Path(p).resolve()
    except (OSError, RuntimeError):   # symlink loop
        return None


def _inode(p: PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class _Index:
    """Paths looked up by resolved path and by (device, inode)."""

    def __init__(self, paths: Iterable[PathLike]):
        self.by_path: dict[Path, Path] = {}
        self.by_inode: dict[tuple[int, int], Path] = {}
        for p in map(Path, paths):
            r, n = _resolved(p), _inode(p)
            if r is not None:
                self.by_path.setdefault(r, p)
            if n is not None:
                self.by_inode.setdefault(n, p)

    def hit(self, p: PathLike, inode: bool = True) -> Path | None:
        r = _resolved(p)
        found = self.by_path.get(r) if r is not None else None
        if found is None and inode:
            n = _inode(p)
            found = self.by_inode.get(n) if n is not None else None
        return found


def folder_files(folder: PathLike) -> list[Path]:
    """The entries of a folder that are files (or links to files): what a reader of the folder
    may open; subfolders (DICOM series) contribute their files too, one level down."""
    out: list[Path] = []
    with contextlib.suppress(OSError):
        for e in os.scandir(folder):
            if e.is_dir():
                with contextlib.suppress(OSError):
                    out += [Path(s.path) for s in os.scandir(e.path) if not s.is_dir()]
            else:
                out.append(Path(e.path))
    return out


def referenced_files(path: PathLike) -> list[Path]:
    """The files an image header refers to: a ``.mhd``'s ``ElementDataFile``, a detached NRRD
    header's ``data file`` (a list or pattern of files is not followed); [] for other files."""
    p = Path(path)
    name = p.name.lower()
    if not (name.endswith(".mhd") or name.endswith(".nhdr") or name.endswith(".nrrd")):
        return []
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16).decode("latin-1")
    except OSError:
        return []
    out = []
    for line in head.splitlines():
        key, sep, value = line.partition("=" if name.endswith(".mhd") else ":")
        key, value = key.strip().lower(), value.strip()
        if sep and key in ("elementdatafile", "data file", "datafile") and value and "%" not in value \
                and value.upper() not in ("LOCAL", "LIST") and not value.upper().startswith("LIST"):
            out.append(p.parent / value)
        if name.endswith(".nrrd") and not line.strip():   # an attached NRRD header ends at a blank line
            break
    return out


def input_files(paths: Iterable[PathLike | None]) -> list[Path]:
    """Every file the inputs consist of or refer to: a file and the data files its header names,
    a folder's files (:func:`folder_files`) and theirs."""
    out: list[Path] = []
    for p in paths:
        if p is None:
            continue
        for f in (folder_files(p) if Path(p).is_dir() else [Path(p)]):
            out += [f, *referenced_files(f)]
    return out


@dataclass
class WritePlan:
    """What one command run writes and reads.

    ``root``: the output folder (holds the ledger); ``files``: every file the run writes;
    ``reads``: every file it reads; ``input_folders``: the folders given as inputs (and DICOM
    series folders); ``flag``: the option naming ``root`` in messages."""

    command: str
    root: Path
    files: list[Path]
    reads: list[Path] = field(default_factory=list)
    input_folders: list[Path] = field(default_factory=list)
    overwrite: bool = False
    out_inside_input: bool = False
    input_inside_out: bool = True
    flag: str = "-o"
    #: input folder -> what to call it in messages ("--gt folder", "model folder")
    input_names: dict[Path, str] = field(default_factory=dict)
    #: output file -> the option that names it, when not ``flag`` (e.g. ``--report``)
    file_flags: dict[Path, str] = field(default_factory=dict)
    #: a noun ("export", "import"): the folder must be new, empty or an earlier run of this command
    exclusive: str | None = None


def check_plan(plan: WritePlan, probe: bool = True) -> None:
    """Raise :class:`UnsafeOutput` (one line) unless ``plan`` can be written without touching an
    input or a file flareseg did not write (module docstring); with ``probe`` also unless the
    output folder can be created or written into.  Creates nothing (the probe file is removed)."""
    root, flag = Path(plan.root), plan.flag
    if os.path.lexists(root) and not root.is_dir():
        raise UnsafeOutput(f"output folder {root} ({flag}) is an existing file, not a folder; use another {flag}")
    reads, folders = _Index(plan.reads), _Index(plan.input_folders)

    def name(f: Path) -> str:
        what = plan.input_names.get(f)
        return f"the {what} {f}" if what else f"the input folder {f}"
    hit = reads.hit(root)
    if hit is not None:
        raise UnsafeOutput(f"output folder {root} is the input {hit}; use another {flag}")
    hit = folders.hit(root)
    if hit is not None:
        raise UnsafeOutput(f"output folder {root} ({flag}) is {name(hit)}: outputs would land among the "
                           f"inputs (use another {flag})")
    r_root = _resolved(root) or Path(os.path.abspath(root))
    for f in map(Path, plan.input_folders):
        rf = _resolved(f)
        if rf is None:
            continue
        if rf in r_root.parents and not plan.out_inside_input:
            raise UnsafeOutput(f"output folder {root} overlaps the input: it lies inside {name(f)}; "
                               f"use a {flag} outside it")
        if r_root in rf.parents and not plan.input_inside_out:
            raise UnsafeOutput(f"output folder {root} overlaps the input: it holds {name(f)}; use a {flag} "
                               "that holds no input")
    if plan.exclusive and root.is_dir() and not plan.overwrite and not _is_run_folder(root, plan.command):
        raise UnsafeOutput(f"{flag} {root} exists, is not empty and is not an earlier {plan.exclusive} "
                           f"(no record in {LEDGER}); use a new or empty folder")
    seen: dict[Path, Path] = {}
    for o in map(Path, plan.files):
        opt = plan.file_flags.get(o, flag)
        owned = owns(o, plan.command)
        hit = reads.hit(o, inode=not owned)   # a hard link we made ourselves may be replaced
        if hit is not None:
            raise UnsafeOutput(f"output {o} would overwrite the input {hit} (same file); use another {opt}")
        parent = _resolved(o.parent)
        if parent is not None and parent != r_root:
            hit = folders.hit(o.parent)
            if hit is not None:
                raise UnsafeOutput(f"output {o} would be written into {name(hit)}; use another {opt}")
        r = _resolved(o) or o
        if r in seen:
            raise UnsafeOutput(f"output {o} is written twice (also as {seen[r]}); use another {opt}")
        seen[r] = o
        if os.path.lexists(o):
            if o.is_dir() and not o.is_symlink():
                raise UnsafeOutput(f"output {o} is an existing folder; use another {opt}")
            if not owned and not plan.overwrite:
                raise UnsafeOutput(f"{o} exists and was not written by flareseg {plan.command} (or changed "
                                   f"since): refusing to replace it; use --overwrite or another {opt}")
    if probe:
        probe_writable(root)


def _is_run_folder(root: Path, command: str, ignore: Sequence[str] = ()) -> bool:
    """True when ``root`` is empty (hidden temps and the entries named in ``ignore`` aside) or its
    ledger records a file of ``command`` that is still there unchanged."""
    try:
        names = [n for n in os.listdir(root) if not TEMP_RE.match(n) and n != LEDGER and n not in ignore]
    except OSError:
        return False
    if not names:
        return True
    return any(owns(root / rel, command) for rel in _read_ledger(root))


def is_run_folder(root: PathLike, command: str, ignore: Sequence[str] = ()) -> bool:
    """True when ``root`` does not exist, is empty (hidden temps and ``ignore`` aside) or is an
    earlier run of ``command`` (its ledger records a file of ``command`` still there unchanged)."""
    root = Path(root)
    return not os.path.lexists(root) or (root.is_dir() and _is_run_folder(root, command, ignore))


def adopt_tree(root: PathLike, command: str) -> None:
    """Record in ``root``'s ledger, as written by ``command``, every regular file below it that no
    ledger records yet (hidden temps and ledgers aside): for a folder that a command can prove it
    made as a whole (e.g. a pipeline stage folder with its resolved config) before ledgers existed."""
    root = Path(root)
    entries = []
    for sub, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not TEMP_RE.match(d)]
        for f in files:
            p = Path(sub) / f
            if f != LEDGER and not TEMP_RE.match(f) and (s := _stamp(p)) is not None and not owns(p):
                entries.append({"path": p.relative_to(root).as_posix(), "command": command, **s})
    _append(root, entries)


def probe_writable(folder: PathLike) -> None:
    """Raise :class:`UnsafeOutput` unless ``folder`` exists and takes a new file, or can be created
    (its nearest existing ancestor is a folder that takes one).  The probe file is removed."""
    folder = Path(folder)
    anc = folder
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UnsafeOutput(f"{folder}: cannot create the output folder: {anc} is not a folder")
    try:
        check_writable(anc)
    except OSError as e:
        raise UnsafeOutput(f"{folder}: cannot create or write into the output folder "
                           f"({e.strerror or e})") from None


# ------------------------------------------------------------------ the ledger

_held = threading.local()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (a directory fd: no lock file is left); reentrant
    within a thread (a second ``flock`` on a new fd of the same folder would wait for itself)."""
    key = os.path.abspath(folder)
    held = getattr(_held, "folders", None)
    if held is None:
        held = _held.folders = set()
    if key in held:
        yield
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(key)
        yield
    finally:
        held.discard(key)
        os.close(fd)


locked = _locked


def _ledger_folder(path: Path) -> tuple[Path, str]:
    """The folder whose ledger records ``path`` (the innermost active recording root holding it,
    else its own folder) and its path relative to that folder."""
    a = Path(os.path.abspath(path))
    with _active_lock:
        roots = sorted(_active, key=lambda r: len(r.parts), reverse=True)
    for r in roots:
        if r in a.parents:
            return r, a.relative_to(r).as_posix()
    return a.parent, a.name


#: folder -> (ledger inode, bytes parsed, entries): a ledger only grows by appends until it is
#: compacted (a new inode), so a grown ledger is parsed from where the last read stopped
_cache: dict[Path, tuple[int, int, dict[str, dict]]] = {}
_cache_lock = threading.Lock()


def _read_ledger(folder: Path) -> dict[str, dict]:
    """path -> latest entry of ``folder``'s ledger (a copy; lines cut short by a killed writer
    are skipped)."""
    try:
        with open(folder / LEDGER, "rb") as f:
            ino = os.fstat(f.fileno()).st_ino
            with _cache_lock:
                c_ino, done, entries = _cache.get(folder, (None, 0, {}))
                if c_ino != ino or os.fstat(f.fileno()).st_size < done:
                    done, entries = 0, {}
                f.seek(done)
                data = f.read()
                end = data.rfind(b"\n") + 1          # parse whole lines only
                for line in data[:end].decode(errors="replace").splitlines():
                    try:
                        e = json.loads(line)
                        entries[str(e["path"])] = e
                    except (ValueError, KeyError, TypeError):
                        continue
                _cache[folder] = (ino, done + end, entries)
                return dict(entries)
    except OSError:
        return {}


def _stamp(path: Path) -> dict | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def owns(path: PathLike, command: str | None = None) -> bool:
    """True when ``path`` is a regular file that a ledger above it records as written by flareseg
    (by ``command`` when given: predict may not replace a label that import wrote) and that is
    unchanged since (size, mtime_ns and inode)."""
    return _owner(Path(path), command) is not None


def _owner(path: Path, command: str | None) -> tuple[Path, str] | None:
    """(ledger folder, relative path) of the entry that makes ``path`` ours (:func:`owns`)."""
    s = _stamp(path)
    if s is None:
        return None
    for folder, rel in _candidates(path):
        e = _read_ledger(folder).get(rel)
        if (e is not None and not e.get("gone") and all(e.get(k) == v for k, v in s.items())
                and (command is None or e.get("command") == command)):
            return folder, rel
    return None


def _candidates(path: Path) -> list[tuple[Path, str]]:
    """Every folder above ``path`` whose ledger may record it (innermost first), with its relative
    path: a folder guarded by a run may be a subfolder of an earlier run's root."""
    a = Path(os.path.abspath(path))
    out = []
    for anc in a.parents:
        if (anc / LEDGER).is_file():
            out.append((anc, a.relative_to(anc).as_posix()))
    return out


def _append(folder: Path, entries: Sequence[dict]) -> None:
    if not entries:
        return
    with _locked(folder):
        led = folder / LEDGER
        fd = os.open(led, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            lead = b""
            if size:
                with open(led, "rb") as f:
                    f.seek(size - 1)
                    lead = b"" if f.read(1) == b"\n" else b"\n"
            os.write(fd, lead + "".join(json.dumps(e) + "\n" for e in entries).encode())
        finally:
            os.close(fd)


def record(*paths: PathLike, command: str | None = None, written: PathLike | None = None) -> None:
    """Add ``paths`` (files just written by ``command``; default: the command of the active
    :func:`recording` root holding them) to their ledger as written by flareseg.  ``written``: the
    file whose size, mtime and inode to record (the temp about to be renamed onto the one path:
    a rename keeps all three), so a ledger that cannot be written fails the write, not after it."""
    by_folder: dict[Path, list[dict]] = {}
    for p in map(Path, paths):
        s = _stamp(Path(written) if written is not None else p)
        if s is None or p.name == LEDGER:
            continue
        folder, rel = _ledger_folder(p)
        with _active_lock:
            cmd = command or _active.get(folder) or "flareseg"
        by_folder.setdefault(folder, []).append({"path": rel, "command": cmd, **s})
    for folder, entries in by_folder.items():
        _append(folder, entries)


def remove_owned(path: PathLike, command: str | None = None) -> bool:
    """Delete ``path`` if flareseg (``command``) wrote it and it is unchanged (:func:`owns`); True
    if deleted.  A file we did not write, or changed since, stays (logged)."""
    path = Path(path)
    if not os.path.lexists(path):
        return False
    owner = _owner(path, command)
    if owner is None:
        log.warning("kept %s: not written by flareseg (or changed since), so not deleted", path)
        return False
    os.unlink(path)
    _append(owner[0], [{"path": owner[1], "gone": True}])   # in the ledger that recorded it
    return True


def adopt(paths: Iterable[PathLike], command: str) -> None:
    """Record files an earlier flareseg version wrote before ledgers existed (a folder it can prove
    it made, e.g. by its own marker or records) so a rerun may replace them."""
    record(*[p for p in map(Path, paths) if _stamp(p) is not None and not owns(p, command)], command=command)


_active: dict[Path, str] = {}
_overwrite: set[Path] = set()
_active_lock = threading.Lock()


@contextlib.contextmanager
def recording(root: PathLike, command: str, overwrite: bool = False) -> Iterator[Path]:
    """While active, every file :func:`flareseg.io.atomic_path` renames into ``root`` (or below)
    is recorded in ``root``'s ledger as written by ``command``, and a write onto an existing file
    there that ``command`` did not write raises :class:`UnsafeOutput` (unless ``overwrite``): the
    safety net for outputs whose names a plan could not list up front.  Creates ``root``."""
    r = Path(os.path.abspath(root))
    r.mkdir(parents=True, exist_ok=True)
    with _active_lock:
        before, before_ow = _active.get(r), r in _overwrite
        _active[r] = command
        (_overwrite.add if overwrite else _overwrite.discard)(r)
    try:
        yield r
    finally:
        with _active_lock:
            if before is None:
                _active.pop(r, None)
            else:
                _active[r] = before
            (_overwrite.add if before_ow else _overwrite.discard)(r)


def check_replace(dest: PathLike) -> None:
    """Called by :func:`flareseg.io.atomic_path` before a write: raise :class:`UnsafeOutput` when
    ``dest`` lies under an active :func:`recording` root and exists as a file that root's command
    did not write (or changed since), unless the root was opened with ``overwrite``."""
    a = Path(os.path.abspath(dest))
    with _active_lock:
        roots = sorted((r for r in _active if r in a.parents), key=lambda r: len(r.parts), reverse=True)
        if not roots:
            return
        root, command, ow = roots[0], _active[roots[0]], roots[0] in _overwrite
    if ow or not os.path.lexists(a) or a.name == LEDGER or owns(a, command):
        return
    raise UnsafeOutput(f"{a} exists and was not written by flareseg {command} (or changed since): refusing "
                       f"to replace it; use --overwrite or another output folder than {root}")


def note_written(dest: PathLike, written: PathLike | None = None) -> None:
    """Called by :func:`flareseg.io.atomic_path` just before the rename of ``written`` (its verified
    temp) onto ``dest``: record ``dest`` when an active :func:`recording` root holds it.  Recorded
    first, so a full disk that refuses the ledger line fails the write and never leaves an
    unrecorded output that a rerun would have to call foreign."""
    a = Path(os.path.abspath(dest))
    with _active_lock:
        active = any(r in a.parents for r in _active)
    if active and a.name != LEDGER:
        record(a, written=written)


def compact(root: PathLike) -> None:
    """Rewrite ``root``'s ledger keeping one line per file that is still ours (a run calls it at
    start so the ledger does not grow with reruns)."""
    root = Path(root)
    if not (root / LEDGER).is_file():
        return
    with _locked(root):
        kept = []
        for rel, e in _read_ledger(root).items():
            s = _stamp(root / rel)
            if not e.get("gone") and s is not None and all(e.get(k) == v for k, v in s.items()):
                kept.append(e)
        with temp_path(root / LEDGER, "") as tmp:   # removed whatever ends the block
            tmp.write_text("".join(json.dumps(e) + "\n" for e in kept))
            os.chmod(tmp, 0o644)
            os.replace(tmp, root / LEDGER)


def same_files(inputs: Iterable[PathLike], outputs: Iterable[PathLike]) -> list[tuple[Path, Path]]:
    """``(output, input)`` pairs where the output is the input: the same path once symlinks are
    resolved, or the same existing file or folder (device and inode: hard links, bind mounts)."""
    idx = _Index(inputs)
    return [(Path(o), h) for o in outputs if (h := idx.hit(o)) is not None]


def ledger_entries(folder: PathLike, command: str | None = None) -> list[str]:
    """Paths (relative to ``folder``) its ledger records as written (by ``command``) and not
    removed since."""
    return [rel for rel, e in _read_ledger(Path(folder)).items()
            if not e.get("gone") and (command is None or e.get("command") == command)]
