"""The shipped configs load, and configs/flare23.yaml holds the paper's full-run settings."""
from __future__ import annotations

from pathlib import Path

import pytest

from flareseg.config import Config, load_config
from flareseg.pipeline.stage1_fine import data_sources

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_loads(name):
    assert isinstance(load_config(CONFIGS / name), Config)


def test_flare23_paper_settings():
    cfg = load_config(CONFIGS / "flare23.yaml")
    assert cfg.data.source == "folders"
    assert cfg.fine.spacing == (2.5, 0.82, 0.82) and cfg.coarse.spacing == (2.5, 1.5, 1.5)
    for plan in (cfg.fine, cfg.coarse):
        assert plan.patch_size == (32, 192, 192) and plan.batch_size == 4
    for tc in (cfg.train_fine, cfg.train_coarse):
        assert (tc.epochs, tc.iterations_per_epoch, tc.num_workers, tc.device) == (1200, 250, 8, "cuda")
    assert (cfg.pseudolabel.k_organ, cfg.pseudolabel.k_tumor) == (1000, 100)
    assert cfg.cutmix.probability == 1.0
    assert (cfg.inference.device, cfg.inference.dtype) == ("cuda", "float16")


def test_flare23_paths_are_parameters(tmp_path):
    cfg = load_config(CONFIGS / "flare23.yaml", [f"data.labeled_images={tmp_path}/img",
                                                 f"data.labels={tmp_path}/lab",
                                                 f"data.validation_labels={tmp_path}/val"])
    src = data_sources(cfg, tmp_path / "stage-1-fine")
    assert src["images"] == tmp_path / "img" and src["labels"] == tmp_path / "lab"
    assert src["validation_labels"] == tmp_path / "val"
    assert src["unlabeled"] == Path("/data/FLARE23/unlabelTr1800")   # not overridden: the placeholder
    assert src["manifest"] is None
