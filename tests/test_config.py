from pathlib import Path

import pytest

from flareseg.config import Config, ConfigError, config_hash, load_config

REPO = Path(__file__).resolve().parents[1]


def test_default_yaml_is_the_paper_settings():
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg == Config()
    assert cfg.fine.spacing == (2.5, 0.82, 0.82) and cfg.coarse.spacing == (2.5, 1.5, 1.5)
    assert cfg.fine.patch_size == (32, 192, 192) and cfg.fine.batch_size == 4
    assert cfg.train_fine.epochs == 1200 and cfg.train_fine.momentum == 0.99 and cfg.train_fine.nesterov
    assert cfg.train_fine.lr == 0.01 and cfg.train_fine.poly_exponent == 0.9
    assert cfg.train_fine.oversample_foreground == 0.7
    assert (cfg.pseudolabel.k_organ, cfg.pseudolabel.k_tumor) == (1000, 100)
    assert cfg.cto.margin_z == (8, 16) and cfg.cto.margin_xy == (24, 32)
    assert cfg.cleaning.min_voxels == 100


def test_demo_config_loads():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.data.source == "phantoms" and cfg.train_fine.device == "cpu"


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train_fine:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train_fine.epochz" in str(e.value) and str(p) in str(e.value)


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("fine:\n  patch_size: [32, 192]\n")
    with pytest.raises(ConfigError, match="fine.patch_size"):
        load_config(p)
    p.write_text("train_fine:\n  loss: maxmerge\n")
    with pytest.raises(ConfigError, match="merge_max"):
        load_config(p)


def test_overrides_and_hash(tmp_path):
    a = load_config(None, ["train_fine.epochs=3", "cleaning.max_organ_distance_mm=60"])
    assert a.train_fine.epochs == 3 and a.cleaning.max_organ_distance_mm == 60.0
    assert config_hash(a) != config_hash(Config())
    assert config_hash(load_config(None, ["train_fine.epochs=3", "cleaning.max_organ_distance_mm=60"])) == config_hash(a)
    with pytest.raises(ConfigError, match="--set"):
        load_config(None, ["train_fine.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train_fine.epochs"])


def test_resolved_json_round_trip(tmp_path):
    import json
    from flareseg.config import load_resolved, resolved
    cfg = load_config(REPO / "configs" / "demo.yaml")
    p = tmp_path / "config.resolved.json"
    p.write_text(json.dumps(resolved(cfg)))
    assert load_resolved(p) == cfg
