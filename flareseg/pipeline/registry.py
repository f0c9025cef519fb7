"""The stage table: which config sections each stage depends on and which stages it reads."""
from __future__ import annotations

from pathlib import Path

from flareseg.config import Config
from flareseg.pipeline.stage import Stage, StageContext


def _stage1(ctx: StageContext) -> dict:
    from flareseg.pipeline import stage1_fine
    return stage1_fine.run(ctx)


def _stage2(ctx: StageContext) -> dict:
    from flareseg.pipeline import stage2_pseudo
    return stage2_pseudo.run(ctx)


def _stage3(ctx: StageContext) -> dict:
    from flareseg.pipeline import stage3_cto
    return stage3_cto.run(ctx)


def _stage4(ctx: StageContext) -> dict:
    from flareseg.pipeline import stage4_clean
    return stage4_clean.run(ctx)


def _stage5(ctx: StageContext) -> dict:
    from flareseg.pipeline import stage5_coarse
    return stage5_coarse.run(ctx)


def _stage6(ctx: StageContext) -> dict:
    from flareseg.pipeline import stage6_ship
    return stage6_ship.run(ctx)


STAGES: dict[int, Stage] = {
    1: Stage(1, ("seed", "data", "fine", "coarse", "train_fine"), (), _stage1),
    2: Stage(2, ("seed", "pseudolabel", "inference"), (1,), _stage2),
    3: Stage(3, ("seed", "cto", "coarse"), (1, 2), _stage3),
    4: Stage(4, ("cleaning",), (1, 2), _stage4),
    5: Stage(5, ("seed", "data", "coarse", "train_coarse", "cutmix"), (1, 2, 3, 4), _stage5),
    6: Stage(6, ("inference", "evaluation"), (1, 5), _stage6),
}


def run_stage(n: int, cfg: Config, work: Path, force: bool = False) -> dict:
    return STAGES[n].execute(cfg, Path(work), force=force)
