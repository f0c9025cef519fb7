"""bench/flare_efficiency.py predicts with the settings the model folder carries (issue 27)."""
from __future__ import annotations

from flareseg.inference.model_settings import write_model_settings


def test_flare_efficiency_uses_the_model_folder_settings(tmp_path):
    from bench import flare_efficiency as mod
    cmd = mod.ours_command(tmp_path, None)
    assert "--device" not in cmd and "--config" not in cmd      # predict reads the folder's settings
    assert mod.ours_command(tmp_path, "cpu")[-3:] == ["--device", "cpu", "-q"]
    assert "the defaults" in mod.settings_line(tmp_path)
    write_model_settings(tmp_path, {"dtype": "float32", "device": "cpu"}, "test")
    line = mod.settings_line(tmp_path)
    assert "flareseg_inference.json" in line and "dtype=float32" in line and "device=cpu" in line
