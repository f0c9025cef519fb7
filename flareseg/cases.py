"""Cases of a folder: the one rule that names a case after its file, and the one folder listing
that ``flareseg import``, ``predict``, ``evaluate`` and ``clean`` share.

* A case's name is its file name without the image suffix and, for images, without nnU-Net's
  channel suffix ``_0000`` (``FLARE23_0001_0000.nii.gz`` -> ``FLARE23_0001``); label files carry
  no channel suffix (``channel_suffix=False``: ``FLARE23_0000.nii.gz`` is case
  ``FLARE23_0000``); a DICOM series folder is named after the folder.
* A folder's entries are its files with a known image suffix (a broken symlink, a FIFO or a device
  with one too: nothing here opens them, reading them reports a bad case) and, where DICOM is
  accepted, its sub-folders (one that cannot be listed too: reading it says why); hidden entries
  (``.name``) are never cases.  A file ``X_0001`` (any ``_dddd`` but ``_0000``) is a further channel
  of case ``X`` when ``X_0000`` is in the same folder and is then left out (flareseg models have
  one channel); otherwise it is the case ``X_0001`` (``FLARE23_0001.nii.gz`` without a channel
  suffix is a case of its own).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from pathlib import Path
from typing import Iterable, Literal

from flareseg.regular_file import file_kind, stat_path
from flareseg.io import InputError, image_suffix, is_dicom_dir, strip_suffix

log = logging.getLogger(__name__)

#: nnU-Net's channel suffix of single-channel images
CHANNEL_0 = "_0000"
_CHANNEL = re.compile(r"_\d{4}$")


def case_name(path: os.PathLike | str, channel_suffix: bool = True) -> str:
    """``FLARE23_0001_0000.nii.gz`` -> ``FLARE23_0001``; DICOM folder -> folder name; labels:
    ``channel_suffix=False`` (nothing but the image suffix is removed)."""
    p = Path(path)
    stem = p.name if p.is_dir() else strip_suffix(p)
    if channel_suffix and stem.endswith(CHANNEL_0):
        stem = stem[: -len(CHANNEL_0)]
    return stem


def folder_entries(folder: os.PathLike | str, channel_suffix: bool = True, dirs: bool = False
                   ) -> dict[str, list[Path]]:
    """Candidate entries of ``folder`` grouped by case name (sorted by name; a list longer than one
    is two files for one case, which the caller reports).  ``dirs``: sub-folders are candidates
    too (DICOM series; the caller checks them).  Raises InputError when ``folder`` is missing, not
    a folder or cannot be listed."""
    folder = Path(folder)
    st = stat_path(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(folder, f"is {file_kind(st.st_mode)}, not a folder")
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise InputError(folder, f"cannot list the folder ({e.strerror})") from None
    files = [p for p in entries if not p.is_dir() and image_suffix(p)]
    stems = {strip_suffix(p) for p in files}
    out: dict[str, list[Path]] = {}
    for p in entries:
        if p.is_dir():
            if dirs:
                out.setdefault(p.name, []).append(p)
            continue
        if not image_suffix(p):
            continue
        stem = strip_suffix(p)
        if channel_suffix and _CHANNEL.search(stem) and not stem.endswith(CHANNEL_0) \
                and stem[:-5] + CHANNEL_0 in stems:
            log.warning("%s: ignored: a further channel of case %s (flareseg models take one channel)",
                        p, stem[:-5])
            continue
        out.setdefault(case_name(p, channel_suffix), []).append(p)
    return out


def list_cases(path: os.PathLike | str, channel_suffix: bool = True, dicom: bool = False) -> dict[str, Path]:
    """Case name -> image file (or DICOM series folder, with ``dicom``) of a folder, sorted by name;
    a single file (or DICOM folder) gives its own case.  Sub-folders that hold no DICOM series are
    not cases, but one that cannot be listed is (reading it reports why).  Raises InputError for a
    missing path, a broken symlink or symlink loop, a path that is neither a regular file nor a
    folder (a FIFO, a device: named as such) and for two entries of one case."""
    path = Path(path)
    st = stat_path(path)
    if stat.S_ISREG(st.st_mode):
        return {case_name(path, channel_suffix): path}
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(path, f"is {file_kind(st.st_mode)}, not an image file or a folder")
    if dicom and is_dicom_dir(path):
        return {path.name: path}
    out: dict[str, Path] = {}
    for name, paths in folder_entries(path, channel_suffix, dirs=dicom).items():
        paths = [p for p in paths if not p.is_dir() or is_dicom_dir(p) or not _listable(p)]
        if len(paths) > 1:
            raise InputError(path, f"case {name!r} appears twice ({', '.join(p.name for p in paths)})")
        if paths:
            out[name] = paths[0]
    return out


def _listable(folder: Path) -> bool:
    """Whether ``folder``'s entries can be listed (an unreadable sub-folder is kept as a case, so
    that reading it reports it instead of it being skipped without a word)."""
    try:
        with os.scandir(folder):
            return True
    except OSError:
        return False


#: how ``--shard i/N`` jobs and torchrun ranks split cases: ``"hash"`` puts a case on shard
#: ``sha256(case_id) mod N`` (depends only on the id and N), ``"round_robin"`` deals sorted ids
ShardMethod = Literal["hash", "round_robin"]


def _hash_bucket(case_id: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "big") % n


def shard(case_ids: Iterable[str], i: int, n: int, method: ShardMethod = "hash") -> list[str]:
    """The sorted case ids of shard ``i`` of ``n``; the shards partition the (unique) ids."""
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n")
    ids = sorted(set(case_ids))
    if method == "hash":
        return [c for c in ids if _hash_bucket(c, n) == i]
    if method == "round_robin":
        return ids[i::n]
    raise ValueError(f"unknown shard method {method!r} (hash, round_robin)")
