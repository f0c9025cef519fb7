"""The settings a prediction runs with: defaults < the model folder's settings < the --config file's
inference keys present in it < --set < the flags (the API: its keywords); the run report says where
each key that was set came from."""
from __future__ import annotations

import json

import pytest

from flareseg.cli import main
from flareseg.config import ConfigError, InferenceConfig
from flareseg.inference.model_settings import SETTINGS_FILE, write_model_settings
from flareseg.inference.predict_settings import layered, resolve_settings
from tiny_model import tiny_plans, write_model_folder
from tests.bad_input import tiny_ct

STORED = {"dtype": "float32", "tta": True, "step_size": 0.7, "skip_threshold": 5, "crop_to_body": False}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m = write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)
    write_model_settings(m, STORED, "test")
    return m


@pytest.fixture()
def config(tmp_path):
    c = tmp_path / "my.yaml"
    c.write_text("inference:\n  tta: false\n  step_size: 0.6\n")   # tta false is the default, yet it wins
    return c


def test_each_layer_wins_over_the_ones_before(model, config):
    settings = model / SETTINGS_FILE
    cfg, came_from = resolve_settings(model, config, ["inference.step_size=0.8"],
                                      [("--skip-threshold", {"skip_threshold": 7})])
    assert (cfg.dtype, cfg.tta, cfg.step_size, cfg.skip_threshold, cfg.crop_to_body) == ("float32", False, 0.8, 7, False)
    assert came_from == {"dtype": f"model folder settings {settings}", "crop_to_body": f"model folder settings {settings}",
                         "tta": f"config {config}", "step_size": "--set", "skip_threshold": "--skip-threshold"}
    assert cfg.image_resampling == InferenceConfig().image_resampling   # no layer set it
    assert layered([]) == (InferenceConfig(), {})
    with pytest.raises(ConfigError, match="flareseg.predict keyword arguments.*step_size"):
        resolve_settings(model, overrides=[("flareseg.predict keyword arguments", {"step_size": 0})])


def _report(folder):
    return json.loads((folder / "predict_report.json").read_text())


def test_cli_and_api_predict_with_the_model_settings_and_say_where_each_came_from(model, config, tmp_path):
    from flareseg import predict
    ct = tiny_ct(tmp_path / "a_0000.nii.gz")
    settings = f"model folder settings {model / SETTINGS_FILE}"
    # no --config: exactly what the model folder stores
    assert main(["predict", "-i", str(ct), "-o", str(tmp_path / "plain"), "-m", str(model), "-q"]) == 0
    rep = _report(tmp_path / "plain")
    assert {k: rep["inference"][k] for k in STORED} == STORED and rep["dtype"] == "float32"
    assert rep["inference_from"] == dict.fromkeys(STORED, settings)
    # every layer: model < config < --set < flags
    assert main(["predict", "-i", str(ct), "-o", str(tmp_path / "all"), "-m", str(model), "-q", "--config", str(config),
                 "--set", "inference.step_size=0.8", "--skip-threshold", "7", "--device", "cpu"]) == 0
    rep = _report(tmp_path / "all")
    assert (rep["inference"]["tta"], rep["inference"]["step_size"], rep["inference"]["skip_threshold"],
            rep["inference"]["dtype"], rep["inference"]["device"]) == (False, 0.8, 7, "float32", "cpu")
    assert rep["inference_from"] == {"dtype": settings, "crop_to_body": settings, "tta": f"config {config}",
                                     "step_size": "--set", "skip_threshold": "--skip-threshold", "device": "--device"}
    # the API: model < config < keywords
    predict(ct, model, tmp_path / "api", config=config, device="cpu", step_size=0.9)
    rep = _report(tmp_path / "api")
    assert (rep["inference"]["tta"], rep["inference"]["step_size"], rep["inference"]["dtype"]) == (False, 0.9, "float32")
    assert rep["inference_from"]["step_size"] == rep["inference_from"]["device"] == "flareseg.predict keyword arguments"
    assert rep["inference_from"]["tta"] == f"config {config}" and rep["inference_from"]["skip_threshold"] == settings


def test_a_damaged_settings_file_is_one_line_exit_2_before_any_work(model, tmp_path, caplog):
    import shutil
    bad = shutil.copytree(model, tmp_path / "bad")
    (bad / SETTINGS_FILE).write_text('{"inference": {"step_size": "fast"}}')
    ct = tiny_ct(tmp_path / "a_0000.nii.gz")
    assert main(["predict", "-i", str(ct), "-o", str(tmp_path / "out"), "-m", str(bad), "-q"]) == 2
    assert str(bad / SETTINGS_FILE) in caplog.text and "step_size" in caplog.text
    assert not (tmp_path / "out").exists()
