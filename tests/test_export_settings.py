"""export-model carries the model's inference settings (flareseg_inference.json) and changes them
with --config/--set."""
from __future__ import annotations

import pytest

from flareseg.cli import main
from flareseg.inference.model_settings import SETTINGS_FILE, read_model_settings, write_model_settings
from flareseg.nnunet.export import MARKER, export_model
from flareseg.write_guard import owns
from tiny_model import tiny_plans, write_model_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                                labels={0: "background", 1: "liver"}, seed=1, trainer_name="FlareSegTrainer")
    write_model_settings(folder, {"dtype": "float32", "step_size": 0.7}, "test")
    return folder


def test_export_carries_the_source_settings(model, tmp_path):
    out = export_model(model, tmp_path / "shipped")
    assert read_model_settings(out) == read_model_settings(model)
    assert read_model_settings(out)["dtype"] == "float32"
    assert owns(out / SETTINGS_FILE, "export-model")


def test_given_settings_win_and_a_reexport_without_settings_removes_them(tmp_path):
    bare = write_model_folder(tmp_path / "bare", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                              labels={0: "background", 1: "liver"}, seed=1, trainer_name="FlareSegTrainer")
    out = tmp_path / "shipped"
    export_model(bare, out, inference={"tta": True}, settings_source="stage-6")
    assert read_model_settings(out)["tta"] is True
    export_model(bare, out)                        # the source carries none: the export has none
    assert not (out / SETTINGS_FILE).exists() and (out / MARKER).is_file()


def test_bad_settings_refused_before_anything_is_written(model, tmp_path):
    from flareseg.config import ConfigError
    with pytest.raises(ConfigError, match="step_size"):
        export_model(model, tmp_path / "x", inference={"step_size": 9})
    assert not (tmp_path / "x").exists()


def test_cli_set_and_config_change_the_carried_settings(model, tmp_path, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inference:\n  step_size: 0.6\n  tta: true\n")
    out = tmp_path / "cli"
    assert main(["export-model", "-m", str(model), "-o", str(out), "--config", str(cfg),
                 "--set", "inference.tta=false"]) == 0
    s = read_model_settings(out)
    assert (s["dtype"], s["step_size"], s["tta"]) == ("float32", 0.6, False)   # model < config < set
    assert main(["export-model", "-m", str(model), "-o", str(tmp_path / "bad"), "--set", "train.epochs=3"]) == 2
    assert "export-model takes only inference.KEY=VALUE" in caplog.text
    assert main(["export-model", "-m", str(model), "-o", str(tmp_path / "bad"),
                 "--set", "inference.dtype=float8"]) == 2
    assert not (tmp_path / "bad").exists()
