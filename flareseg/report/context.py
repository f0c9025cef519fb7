"""What every QC section builder gets: the work folder, the output folder and the stage manifests.

Its own module so that the page (:mod:`flareseg.report.qc`) and the builders it calls
(:mod:`flareseg.report.sections`, :mod:`flareseg.report.validation`) all import it, and not each other.
Paths recorded in manifests are absolute at run time; :func:`local_path` re-bases them onto the
work folder (the part from ``stage-N-<name>/`` on), so a moved or copied work folder still reports.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from flareseg.io import link_or_copy
from flareseg.work_layout import stage_dir

_STAGE_PART = re.compile(r"^stage-\d-[a-z]+$")


def local_path(path: str | os.PathLike | None, work: Path) -> Path | None:
    """``path`` re-based onto ``work`` when it lies inside a ``stage-N-<name>`` folder and that copy
    exists; else ``path`` itself if it exists; else None."""
    if not path:
        return None
    p = Path(path)
    for i, part in enumerate(p.parts):
        if _STAGE_PART.match(part):
            cand = Path(work).joinpath(*p.parts[i:])
            if cand.exists():
                return cand
            break
    return p if p.exists() else None


@dataclass
class ReportContext:
    """What section builders get: the work folder, the output folder and the stage manifests."""
    work: Path
    out: Path
    manifests: dict[int, dict | None]

    def stage(self, n: int) -> Path:
        return stage_dir(self.work, n)

    def result(self, n: int) -> dict:
        return (self.manifests.get(n) or {}).get("result") or {}

    def path(self, p: str | os.PathLike | None) -> Path | None:
        return local_path(p, self.work)

    def asset(self, src: Path, n: int, name: str | None = None) -> str:
        """Copy ``src`` into ``out/stage-N/`` and return its link relative to ``out``."""
        rel = Path(f"stage-{n}") / (name or src.name)
        link_or_copy(src, self.out / rel)
        return rel.as_posix()

    def new_asset(self, n: int, name: str) -> tuple[Path, str]:
        """(destination path, relative link) for a file drawn by the report itself."""
        rel = Path(f"stage-{n}") / name
        return self.out / rel, rel.as_posix()
