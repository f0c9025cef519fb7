"""Inference settings that travel with a model folder (flareseg.inference.model_settings)."""
from __future__ import annotations

import json

import pytest

from flareseg.config import ConfigError, InferenceConfig, to_dict
from flareseg.inference.model_settings import (SETTINGS_FILE, read_model_settings, resolve_inference,
                                               write_model_settings)
from flareseg.write_guard import UnsafeOutput, owns


def test_round_trip_stores_every_key_and_the_source(tmp_path):
    dest = write_model_settings(tmp_path, {"dtype": "float32", "tta": True}, "stage-6 config x.yaml")
    assert dest == tmp_path / SETTINGS_FILE
    doc = json.loads(dest.read_text())
    assert doc["source"] == "stage-6 config x.yaml"
    assert doc["inference"] == {**to_dict(InferenceConfig()), "dtype": "float32", "tta": True}
    assert read_model_settings(tmp_path) == doc["inference"]
    assert owns(dest, "export-model")   # recorded in the folder's ledger by the write guard


def test_folder_without_settings_reads_empty(tmp_path):
    assert read_model_settings(tmp_path) == {}


def test_bad_value_is_refused_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="step_size"):
        write_model_settings(tmp_path, {"step_size": 7}, "test")
    assert not (tmp_path / SETTINGS_FILE).exists()


def test_foreign_settings_file_is_not_replaced(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text('{"inference": {}}')
    with pytest.raises(UnsafeOutput, match=SETTINGS_FILE):
        write_model_settings(tmp_path, {}, "test")
    write_model_settings(tmp_path, {"tta": True}, "test", overwrite=True)
    assert read_model_settings(tmp_path)["tta"] is True
    write_model_settings(tmp_path, {"tta": False}, "test")   # now ours: replaced without overwrite
    assert read_model_settings(tmp_path)["tta"] is False


@pytest.mark.parametrize("content, words", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a mapping"),
    ('{"inference": {"dtype": "float8"}}', "dtype"),
    ('{"inference": {"no_such_key": 1}}', "no_such_key"),
])
def test_damaged_file_is_one_line_config_error_naming_it(tmp_path, content, words):
    (tmp_path / SETTINGS_FILE).write_text(content)
    with pytest.raises(ConfigError) as e:
        read_model_settings(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / SETTINGS_FILE) in msg and words in msg and "\n" not in msg


def test_partial_file_returns_only_its_keys(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text('{"inference": {"tta": true}}')
    assert read_model_settings(tmp_path) == {"tta": True}


def test_precedence_defaults_model_config_set(tmp_path):
    model = tmp_path / "model"
    write_model_settings(model, {"dtype": "float32", "tta": True, "step_size": 0.7}, "test")
    cfg_file = tmp_path / "c.yaml"
    # an explicit key equal to the default still wins over the model's value
    cfg_file.write_text("inference:\n  tta: false\n  step_size: 0.6\n")
    cfg = resolve_inference(model)
    assert (cfg.dtype, cfg.tta, cfg.step_size) == ("float32", True, 0.7)
    cfg = resolve_inference(model, cfg_file)
    assert (cfg.dtype, cfg.tta, cfg.step_size) == ("float32", False, 0.6)
    cfg = resolve_inference(model, cfg_file, ["inference.step_size=0.8", "inference.dtype=auto"])
    assert (cfg.dtype, cfg.tta, cfg.step_size) == ("auto", False, 0.8)
    assert resolve_inference(None) == InferenceConfig()
    with pytest.raises(ConfigError, match="inference.nope"):
        resolve_inference(model, None, ["inference.nope=1"])
