"""The work directory's layout: one folder per pipeline stage, ``work/stage-N-<name>/``.

Torch- and pipeline-free, so that what reads the stage folders (the QC report, the run summary,
tests) and what writes them (:mod:`flareseg.pipeline.stage`) share one spelling without the
readers importing the pipeline.
"""
from __future__ import annotations

from pathlib import Path

#: stage number -> name; the stage folders are named after both
STAGE_NAMES = {1: "fine", 2: "pseudolabels", 3: "cto", 4: "cleaning", 5: "coarse", 6: "ship"}


def stage_dir(work: Path, n: int) -> Path:
    """The folder of stage ``n`` under the work directory ``work``."""
    return Path(work) / f"stage-{n}-{STAGE_NAMES[n]}"
