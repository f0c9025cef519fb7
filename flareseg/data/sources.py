"""What `flareseg import` finds in its input folders, checked before anything is written.

* :func:`scan_folder`: the cases of one folder by id; an entry that cannot be a case (broken
  symlink, empty or non-DICOM subfolder, two files for one case id) is a bad case with its reason.
* :func:`pair_cases`: labeled images with their labels, and the unlabeled images.
* :func:`read_manifest`: ``case_id,annotated`` rows, every bad row reported as ``FILE:LINE: reason``.

Problems with the arguments themselves (a folder that does not exist or holds nothing to import,
one case id both labeled and unlabeled, a bad manifest row) raise :class:`ImportConfigError` or
:class:`flareseg.io.InputError`: the run stops before any work (exit 2).
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from flareseg.file_check import IMAGE_SUFFIXES
from flareseg.cases import folder_entries
from flareseg.io import InputError, image_suffix, is_dicom_dir
from flareseg.labels import MAX_LABEL, label_type

log = logging.getLogger(__name__)

KNOWN_SUFFIXES = ", ".join(IMAGE_SUFFIXES)


class ImportConfigError(ValueError):
    """The import's inputs are unusable as given (found before any work; exit 2).

    ``problems`` holds one line per problem, each naming the file (and line) and the reason."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class SourceCase:
    """One case to import. ``problem`` (a missing label file or manifest row, a bad label entry) is
    reported only after the image has been checked, so an image's own problem comes first."""
    case_id: str
    image: Path
    label: Path | None = None
    problem: str | None = None


@dataclass
class FolderScan:
    folder: Path
    cases: dict[str, Path] = field(default_factory=dict)   # case id -> file or DICOM folder
    bad: dict[str, str] = field(default_factory=dict)      # case id -> "path: reason"
    given: bool = True                                     # False: the folder was not given

    @property
    def ids(self) -> set[str]:
        return set(self.cases) | set(self.bad)


def _entry_problem(p: Path) -> str | None:
    """Why folder entry ``p`` cannot be a case (``None``: it can). Only called on candidates."""
    if p.is_symlink() and not p.exists():
        return f"broken symlink (target {os.readlink(p)} does not exist)"
    if p.is_dir():
        try:
            with os.scandir(p) as it:
                empty = next(it, None) is None
        except OSError as e:
            return f"cannot list the folder ({e.strerror or e}): not read"
        if empty:
            return "empty folder, not a DICOM series"
        if not is_dicom_dir(p):
            return "folder holds no DICOM series"
    return None


def scan_folder(folder: Path, channel_suffix: bool = True) -> FolderScan:
    """Cases of ``folder`` keyed by id (``channel_suffix=False`` for label folders, see
    :func:`flareseg.cases.case_name`). Other files are named in a warning and ignored.

    Raises InputError when ``folder`` is missing or not a folder."""
    folder = Path(folder)
    by_id = folder_entries(folder, channel_suffix, dirs=True)
    listed = {p for paths in by_id.values() for p in paths}
    for p in sorted(folder.iterdir()):
        if p not in listed and not p.name.startswith(".") and not image_suffix(p) \
                and not p.name.lower().endswith((".raw", ".zraw")):   # .mhd pixel data
            log.warning("%s: ignored: not an image file (%s) or a DICOM series folder", p, KNOWN_SUFFIXES)
    scan = FolderScan(folder)
    for cid, paths in by_id.items():
        if len(paths) > 1:
            scan.bad[cid] = (f"{folder}: case {cid} has {len(paths)} files: "
                             f"{', '.join(p.name for p in paths)} (keep one)")
            continue
        why = _entry_problem(paths[0])
        if why:
            scan.bad[cid] = f"{paths[0]}: {why}"
        else:
            scan.cases[cid] = paths[0]
    return scan


def _nothing_in(folder: Path) -> str:
    return f"{folder}: nothing to import (no image file {KNOWN_SUFFIXES} or DICOM series folder)"


def pair_cases(images_dir: Path | None, labels_dir: Path | None, unlabeled_dir: Path | None
               ) -> tuple[list[SourceCase], list[SourceCase], dict[str, str], set[str]]:
    """Match labeled images with labels by case id.

    Returns (labeled, unlabeled, bad: case id -> reason, ids of the labeled folders). A case id
    found both in the labeled folders and in ``unlabeled_dir``, or no entry in any folder, raises
    ImportConfigError; a single folder without entries is only warned about (its cases, if any
    were meant, show up as bad: no label file, label without an image)."""
    labeled: list[SourceCase] = []
    bad: dict[str, str] = {}
    lab_ids: set[str] = set()
    imgs = labs = FolderScan(Path(), given=False)
    if images_dir is not None:
        imgs = scan_folder(images_dir)
        if labels_dir is not None:
            labs = scan_folder(labels_dir, channel_suffix=False)
        lab_ids = imgs.ids | labs.ids
        for cid in sorted(lab_ids):
            if cid in imgs.bad:
                bad[cid] = imgs.bad[cid]
            elif cid not in imgs.cases:
                bad[cid] = labs.bad.get(cid) or f"{labs.cases[cid]}: label without an image in {images_dir}"
            elif cid in labs.bad:
                labeled.append(SourceCase(cid, imgs.cases[cid], problem=labs.bad[cid]))
            elif cid not in labs.cases:
                labeled.append(SourceCase(cid, imgs.cases[cid],
                                          problem=f"{imgs.cases[cid]}: no label file for case {cid} in {labels_dir}"))
            else:
                labeled.append(SourceCase(cid, imgs.cases[cid], labs.cases[cid]))
    unlabeled: list[SourceCase] = []
    unl = None
    if unlabeled_dir is not None:
        unl = scan_folder(unlabeled_dir)
        dup = sorted(unl.ids & lab_ids)
        if dup:
            raise ImportConfigError(
                f"{_where(unl, cid)}: case id {cid} is also a labeled case ({_where(imgs, cid, labs)}); "
                "a case is either labeled or unlabeled: remove one" for cid in dup)
        for cid in sorted(unl.ids):
            if cid in unl.bad:
                bad[cid] = unl.bad[cid]
            else:
                unlabeled.append(SourceCase(cid, unl.cases[cid]))
    scans = [s for s in (imgs, labs, unl) if s is not None and s.given]
    empty = [s.folder for s in scans if not s.ids]
    if len(empty) == len(scans):
        raise ImportConfigError(_nothing_in(f) for f in empty)
    for f in empty:
        log.warning("%s", _nothing_in(f))
    return labeled, unlabeled, bad, lab_ids


def _where(scan: FolderScan, cid: str, other: FolderScan | None = None) -> str:
    """The file behind case ``cid`` in ``scan`` (or else ``other``), for messages."""
    for s in (scan, other or scan):
        if cid in s.cases:
            return str(s.cases[cid])
        if cid in s.bad:
            return s.bad[cid].split(": ", 1)[0]
    return cid


def read_manifest(path: Path, labeled_ids: set[str] | None = None,
                  unlabeled_ids: Iterable[str] = ()) -> dict[str, tuple[int, ...]]:
    """CSV ``case_id,annotated`` (classes separated by spaces or ``_``) -> case -> label type.

    Every bad row is collected and raised at once as ImportConfigError, one ``FILE:LINE: reason``
    each: a missing column, an extra column, a non-integer or unknown class, a repeated case id and
    (when ``labeled_ids`` is given) a case id that is not a labeled case."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"cannot read the manifest ({e})") from None
    if not rows or [c.strip() for c in rows[0]] != ["case_id", "annotated"]:
        raise ImportConfigError([f"{path}:1: the manifest must start with the header 'case_id,annotated'"])
    out: dict[str, tuple[int, ...]] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
    unlabeled_ids = set(unlabeled_ids)
    for i, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        why = _row_problem(row, first_line, labeled_ids, unlabeled_ids)
        if why:
            problems.append(f"{path}:{i}: {why}")
            continue
        cid = row[0].strip()
        first_line[cid] = i
        out[cid] = label_type(int(t) for t in row[1].replace("_", " ").split())
    if problems:
        raise ImportConfigError(problems)
    return out


def _row_problem(row: list[str], first_line: dict[str, int], labeled_ids: set[str] | None,
                 unlabeled_ids: set[str]) -> str | None:
    if len(row) != 2:
        return (f"expected 2 columns 'case_id,annotated', got {len(row)} "
                "(separate classes with spaces, e.g. 'FLARE23_0001,1 2 3 14')")
    cid = row[0].strip()
    if not cid:
        return "empty case id"
    if cid in first_line:
        return f"case {cid} is listed twice (first on line {first_line[cid]})"
    for tok in row[1].replace("_", " ").split():
        try:
            c = int(tok)
        except ValueError:
            return f"case {cid}: class {tok!r} is not an integer"
        if not 0 <= c <= MAX_LABEL:
            return f"case {cid}: class {c} is not a FLARE23 class (0..{MAX_LABEL})"
    if labeled_ids is not None and cid not in labeled_ids:
        where = "an unlabeled case" if cid in unlabeled_ids else "not among the labeled images"
        return f"unknown case id {cid}: {where}"
    return None
