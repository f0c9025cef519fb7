"""The stage table: which config sections each stage depends on and which stages it reads."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from flareseg.config import Config
from flareseg.pipeline.stage import Stage, StageContext


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


def run_stage(n: int, cfg: Config, work: Path, force: bool = False) -> dict:
    return STAGES[n].execute(cfg, Path(work), force=force)
