"""The stage table: which config sections each stage depends on, which stages it reads, and what
each stage does (its one-paragraph description, shown by ``--help`` and as the docstring of the
per-stage script ``stages/stage_N.py``).  Stage folder names are :data:`STAGE_NAMES` (defined with
``stage_dir`` in :mod:`flareseg.work_layout`)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from flareseg.config import Config
from flareseg.pipeline.stage import Stage, StageContext
from flareseg.work_layout import STAGE_NAMES


def _lazy(module: str) -> Callable[[StageContext], dict]:
    """The stage's ``run``, imported only when the stage runs (keeps torch/nnU-Net out of --help)."""
    def run(ctx: StageContext) -> dict:
        return importlib.import_module(f"flareseg.pipeline.{module}").run(ctx)
    return run


STAGES: dict[int, Stage] = {
    1: Stage(1, ("seed", "data", "fine", "coarse", "train_fine"), (), _lazy("stage1_fine")),
    2: Stage(2, ("seed", "pseudolabel", "inference"), (1,), _lazy("stage2_pseudo")),
    # stage-3 cleans its source labels with stage-4's rules itself (so it reads the cleaning keys)
    3: Stage(3, ("seed", "cto", "coarse", "cleaning"), (1, 2), _lazy("stage3_cto")),
    4: Stage(4, ("cleaning",), (1, 2), _lazy("stage4_clean")),
    5: Stage(5, ("seed", "data", "coarse", "train_coarse", "cutmix"), (1, 2, 3, 4), _lazy("stage5_coarse")),
    6: Stage(6, ("inference", "evaluation"), (1, 5), _lazy("stage6_ship")),
}

#: what each stage does, one paragraph (``--help``, ``stages/stage_N.py`` docstrings)
DESCRIPTIONS: dict[int, str] = {
    1: "import and validate the labeled data (or generate phantoms), plan and preprocess the fine and "
       "coarse spacings with nnU-Net, and train the fine model with the merge-max loss and "
       "label-type batches.",
    2: "pseudo-label the unlabeled scans with the fine model, rank them by organ and tumor "
       "uncertainty, select the most certain ones, and fill organs into the tumor-only cases.",
    3: "build the context-aware tumor-object (CTO) pool: tumors with their organ context cut from "
       "the cleaned training labels at the coarse spacing, plus a QC gallery.",
    4: "clean every label the coarse model will train on (small regions, tumors outside the abdomen "
       "or far from organs) and write the coarse training set.",
    5: "train the coarse model on ground truth and the selected, cleaned pseudo labels with online "
       "context-aware CutMix from the stage-3 pool.",
    6: "ship the coarse model: predict the validation set the way the FLARE harness runs a "
       "submission, evaluate DSC/NSD and write the efficiency report.",
}
assert set(DESCRIPTIONS) == set(STAGES) == set(STAGE_NAMES)


def run_stage(n: int, cfg: Config, work: Path, force: bool = False) -> dict:
    return STAGES[n].execute(cfg, Path(work), force=force)
