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
    # one orientation, no mirroring, small rotations in the demo; nnU-Net's augmentation by default
    assert cfg.data.reorient and Config().data.reorient
    for tc in (cfg.train_fine, cfg.train_coarse):
        assert tc.mirror_axes == () and tc.max_rotation_deg == 15
    assert Config().train_fine.mirror_axes is None and Config().train_fine.max_rotation_deg is None


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


# ----------------------------------------------------------------------------- allowed ranges

def _numeric(tp) -> bool:
    """True for int/float types, tuples of them and mappings to them (not bool, not Literal)."""
    import typing
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (int, float):
        return True
    if origin is typing.Literal:
        return False
    if origin in (tuple, dict) or origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_numeric(a) for a in args if a is not Ellipsis and a is not type(None))
    return False


def _config_classes(cls=Config, seen=None):
    import dataclasses
    import typing
    seen = seen if seen is not None else {}
    seen[cls.__name__] = cls
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp) and tp.__name__ not in seen:
            _config_classes(tp, seen)
    return seen


def test_every_numeric_key_has_a_declared_range():
    import typing
    from flareseg.config import range_of
    classes = _config_classes()
    assert len(classes) == 12   # Config and its ten sections (PhantomConfig, ElasticConfig nested)
    numeric = [(cls, name) for cls in classes.values()
               for name, tp in typing.get_type_hints(cls).items() if _numeric(tp)]
    assert len(numeric) >= 50
    missing = [f"{cls.__name__}.{name}" for cls, name in numeric if range_of(cls, name) is None]
    assert not missing, f"numeric config keys without a range in config.RANGES: {missing}"


def test_defaults_and_shipped_configs_are_in_range():
    from flareseg.config import validate
    validate(Config())
    for p in sorted((REPO / "configs").glob("*.yaml")):
        validate(load_config(p), str(p))


@pytest.mark.parametrize("override, key, expect", [
    ("train_fine.epochs=-3", "train_fine.epochs", ">= 1"),
    ("train_coarse.epochs=0", "train_coarse.epochs", ">= 1"),
    ("train_fine.iterations_per_epoch=0", "train_fine.iterations_per_epoch", ">= 1"),
    ("fine.spacing=[0,0,0]", "fine.spacing", "(0, 50]"),
    ("coarse.spacing=[2.5,-1.5,1.5]", "coarse.spacing", "(0, 50]"),
    ("fine.patch_size=[0,64,64]", "fine.patch_size", "[4, 1024]"),
    ("train_fine.lr=0", "train_fine.lr", "(0, 10]"),
    ("train_fine.momentum=1.0", "train_fine.momentum", "[0, 1)"),
    ("train_fine.oversample_foreground=1.2", "train_fine.oversample_foreground", "[0, 1]"),
    ("cutmix.probability=-0.1", "cutmix.probability", "[0, 1]"),
    ("cleaning.min_voxels=-5", "cleaning.min_voxels", ">= 0"),
    ("cleaning.max_organ_distance_mm=-20", "cleaning.max_organ_distance_mm", ">= 0"),
    ("cto.margin_z=[16,8]", "cto.margin_z", "lo <= hi"),
    ("cto.margin_xy=[-1,4]", "cto.margin_xy", "[0, 256]"),
    ("data.phantoms.labeled=1000000000", "data.phantoms.labeled", "[0, 10000]"),
    ("data.phantoms.seed=-1", "data.phantoms.seed", "[0, 4294967295]"),
    ("data.phantoms.size_xy=[8,8]", "data.phantoms.size_xy", "[16, 2048]"),
    ("data.num_processes=0", "data.num_processes", "[1, 512]"),
    ("inference.step_size=0", "inference.step_size", "(0, 1]"),
    ("evaluation.nsd_min_dsc=.nan", "evaluation.nsd_min_dsc", "[0, 1]"),
    ("evaluation.nsd_tolerance_mm={99: 2.0}", "evaluation.nsd_tolerance_mm", "keys in [1, 14]"),
    ("evaluation.z_range_classes=[0, 5]", "evaluation.z_range_classes", "[1, 14]"),
    ("pseudolabel.k_organ=-1", "pseudolabel.k_organ", ">= 0"),
    ("seed=-7", "seed", "[0, "),
])
def test_out_of_range_value_names_key_value_and_range(override, key, expect):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs" / "demo.yaml", [override])
    msg = str(e.value)
    assert "\n" not in msg
    assert f"--set {override}" in msg and f"'{key}' = " in msg and "out of range" in msg, msg
    assert expect in msg, msg


def test_out_of_range_in_a_file_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train_fine:\n  epochs: -3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "'train_fine.epochs' = -3" in str(e.value)


def test_cross_field_order_and_boundaries():
    with pytest.raises(ConfigError, match="fine.features_base.*<= fine.features_max"):
        load_config(REPO / "configs" / "demo.yaml", ["fine.features_base=128"])
    # the edges of a closed range are allowed
    cfg = load_config(None, ["cutmix.probability=0", "cleaning.min_voxels=0",
                             "data.phantoms.labeled=10000", "inference.step_size=1"])
    assert cfg.cutmix.probability == 0 and cfg.data.phantoms.labeled == 10000


@pytest.mark.parametrize("override, key, expect", [
    ("train_fine.epochs=abc", "train_fine.epochs", "an integer"),
    ("train_fine.epochs=2.5", "train_fine.epochs", "an integer"),
    ("train_fine.lr=fast", "train_fine.lr", "a number"),
    ("fine.spacing=[1, 2]", "fine.spacing", "a list of 3 values"),
    ("fine.spacing=2.5", "fine.spacing", "a list"),
    ("cto.margin_z=[8, x]", "cto.margin_z[1]", "an integer"),
])
def test_type_mismatch_names_the_key(override, key, expect):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"'{key}'" in str(e.value) and expect in str(e.value)


def test_config_path_problems_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "binary.yaml"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="binary.yaml"):
        load_config(bad)


def test_resolved_config_out_of_range_is_rejected(tmp_path):
    import json
    from flareseg.config import load_resolved, resolved
    d = resolved(Config())
    d["train_fine"]["epochs"] = -3
    p = tmp_path / "config.resolved.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="train_fine.epochs"):
        load_resolved(p)


def test_mirrored_member_needs_a_model_trained_with_left_right_mirroring(tmp_path):
    """pseudolabel.member_tta mirrors the scan left-right; a fine model trained without that
    mirroring (train_fine.mirror_axes without 2) tells left from right by side, so the member's
    left/right classes would come back swapped: refused, naming both keys."""
    with pytest.raises(ConfigError, match=r"pseudolabel.member_tta.*train_fine.mirror_axes"):
        load_config(REPO / "configs" / "demo.yaml", ["pseudolabel.member_tta=true"])
    ok = load_config(REPO / "configs" / "demo.yaml", ["pseudolabel.member_tta=true", "train_fine.mirror_axes=[2]"])
    assert ok.pseudolabel.member_tta
    assert load_config(None, ["pseudolabel.member_tta=true"]).train_fine.mirror_axes is None
