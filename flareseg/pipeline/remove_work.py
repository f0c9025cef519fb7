"""``make clean-work``: remove a pipeline work folder, and nothing that is not one.

``rm -rf $(WORK)`` removed whatever ``WORK`` named: a typo (``WORK=~``, ``WORK=$PWD``, a dataset
folder) lost a user's files.  Here the folder is removed only when every entry in it is something
the pipeline (or ``flareseg report``) made as a whole: a stage folder ``stage-N-<name>/`` whose
ledger records the pipeline's files (or that holds the ``config.resolved.json`` every stage writes
first, for a folder made before ledgers), the QC report folder ``qc/`` whose ledger records
``flareseg report``'s page, the work folder's own ledger and temporary files.  Anything else --
a file or folder of someone's, a symlink -- refuses the whole removal before anything is deleted
(one line naming it).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from flareseg import write_guard
from flareseg.pipeline.stage import PIPELINE, made_by_pipeline
from flareseg.temp_names import TEMP_RE
from flareseg.work_layout import STAGE_NAMES, stage_dir


def _ours(entry: Path, work: Path) -> bool:
    """True when ``entry`` (directly in ``work``) is a folder the pipeline or the QC report made."""
    if entry.is_symlink() or not entry.is_dir():
        return TEMP_RE.match(entry.name) is not None or entry.name == write_guard.LEDGER
    if entry.name in {stage_dir(work, n).name for n in STAGE_NAMES}:
        return write_guard.is_run_folder(entry, PIPELINE, ignore=("logs",)) or made_by_pipeline(entry)
    if entry.name == "qc":
        return write_guard.is_run_folder(entry, "report")
    return TEMP_RE.match(entry.name) is not None


def removal_plan(work: os.PathLike | str) -> list[Path]:
    """The entries of the work folder ``work`` to remove (empty when it does not exist); raises
    :class:`flareseg.write_guard.UnsafeOutput` (one line) when ``work`` is not a folder or holds
    anything the pipeline did not make (module docstring)."""
    work = Path(work)
    if not os.path.lexists(work):
        return []
    if work.is_symlink() or not work.is_dir():
        raise write_guard.UnsafeOutput(f"{work}: not a work folder ({'a symlink' if work.is_symlink() else 'a file'}); "
                                       "nothing removed")
    entries = sorted(work.iterdir())
    foreign = [e.name for e in entries if not _ours(e, work)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise write_guard.UnsafeOutput(
            f"{work} is not (only) a pipeline work folder: it holds {shown}, which the pipeline did not make "
            f"(no stage folder with a record in its {write_guard.LEDGER}); refusing to remove it. Remove it by "
            "hand if that is what you mean")
    return entries


def remove_work(work: os.PathLike | str) -> list[Path]:
    """Remove the work folder ``work`` when :func:`removal_plan` allows it: every checked entry,
    then the folder itself if nothing new appeared meanwhile.  The removed entries."""
    work = Path(work)
    entries = removal_plan(work)
    for e in entries:
        if e.is_dir() and not e.is_symlink():
            shutil.rmtree(e)
        else:
            e.unlink(missing_ok=True)
    if os.path.lexists(work):
        try:
            work.rmdir()
        except OSError:   # something appeared meanwhile: left as it is
            pass
    return entries
