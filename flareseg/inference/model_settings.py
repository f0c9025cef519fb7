"""Inference settings that travel with a model folder: ``flareseg_inference.json``.

Stage-6 and ``flareseg export-model`` write the resolved ``inference`` settings (every
:class:`flareseg.config.InferenceConfig` key) into the shipped folder, so whoever predicts with it
(``flareseg predict``, the Python API, the Docker entry point, the benches) starts from what stage-6
measured, not from the defaults.  The precedence of a prediction's settings is

    defaults < the model folder's settings < --config FILE < --set inference.KEY=VALUE < flags

(:func:`resolve_inference` for the middle three).  The file holds ``{"inference": {...},
"source": "<where they came from>", "flareseg": "<version>"}``.  A folder without it predicts
with the defaults, as before.

A torch-free helper over config, io and the write guard (declared on the files floor in
``tests/test_layers.py``), so the export in ``flareseg.nnunet`` writes it too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from flareseg import write_guard
from flareseg.config import InferenceConfig, inference_config, load_config, parse_override, to_dict
from flareseg.errors import ConfigError, short_repr
from flareseg.io import read_json, write_json
from flareseg.versions import versions
from flareseg.yaml_read import read_yaml

#: the settings file in a model folder (not read by stock nnU-Net)
SETTINGS_FILE = "flareseg_inference.json"

PathLike = str | os.PathLike


def settings_path(model_dir: PathLike) -> Path:
    return Path(model_dir) / SETTINGS_FILE


def settings_document(inference: dict[str, Any], source: str) -> dict[str, Any]:
    """The file's content: ``inference`` completed with the defaults and checked like a config
    file (:class:`ConfigError` naming ``source`` and the key), where they came from, the version."""
    cfg = inference_config(None, f"model settings from {source}", **dict(inference))
    return {"inference": to_dict(cfg), "source": str(source), "flareseg": versions().get("flareseg")}


def write_model_settings(model_dir: PathLike, inference: dict[str, Any], source: str,
                         command: str = "export-model", overwrite: bool = False) -> Path:
    """Write ``inference`` (InferenceConfig keys; missing ones get the defaults) into
    ``model_dir/flareseg_inference.json``, recorded as written by ``command``.

    The write is planned by :mod:`flareseg.write_guard` (an existing settings file that
    ``command`` did not write is refused with :class:`flareseg.write_guard.UnsafeOutput`, unless
    ``overwrite``) and carried out atomically.  Raises :class:`ConfigError` for a bad key or
    value, before anything is written."""
    doc = settings_document(inference, source)
    root = Path(model_dir)
    dest = settings_path(root)
    write_guard.check_plan(write_guard.WritePlan(command, root, [dest], overwrite=overwrite))
    with write_guard.recording(root, command, overwrite):
        write_json(doc, dest)
    return dest


def read_model_settings(model_dir: PathLike) -> dict[str, Any]:
    """The inference keys stored in ``model_dir`` (checked with
    :func:`flareseg.config.inference_config`), ``{}`` when the folder has no settings file.  A
    damaged file (not JSON, not the expected mapping, an unknown key, a bad value) raises a
    one-line :class:`ConfigError` naming the file."""
    path = settings_path(model_dir)
    if not os.path.lexists(path):
        return {}
    try:
        doc = read_json(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the model's inference settings "
                          f"({getattr(e, 'strerror', None) or e})") from None
    except ValueError as e:   # json.JSONDecodeError, or InputError for a FIFO/device
        reason = (f"not JSON ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError)
                  else getattr(e, "reason", str(e)))
        raise ConfigError(f"{path}: damaged model inference settings: {reason}") from None
    stored = doc.get("inference") if isinstance(doc, dict) else None
    if not isinstance(stored, dict):
        raise ConfigError(f"{path}: damaged model inference settings: expected a mapping with an 'inference' "
                          f"mapping, got {short_repr(doc)}")
    cfg = to_dict(inference_config(None, str(path), **stored))
    return {k: cfg[k] for k in stored}


def explicit_inference(config: PathLike | None = None, sets: Sequence[str] = ()) -> dict[str, Any]:
    """The inference keys that ``config``'s ``inference`` section and ``sets``
    (``inference.KEY=VALUE``, later ones win) set explicitly -- not the defaults they leave
    alone.  The whole file and every override are first checked by
    :func:`flareseg.config.load_config` (same one-line errors)."""
    load_config(config, list(sets))
    out: dict[str, Any] = {}
    if config is not None:
        section = (read_yaml(config) or {}).get("inference") or {}
        out.update(section)
    for item in sets:
        keys, value = parse_override(item)
        if keys[0] != "inference":
            continue
        if len(keys) == 1:
            out.update(value or {})
        else:
            out[keys[1]] = value
    return out


#: one layer of settings: (where they come from, InferenceConfig keys -> values)
Layer = tuple[str, dict[str, Any]]


def layered(layers: Sequence[Layer]) -> tuple[InferenceConfig, dict[str, str]]:
    """The defaults with each layer applied in turn (later ones win), checked like a config file
    (:class:`flareseg.config.ConfigError` naming the layer and the key); and key -> the layer that
    set it last."""
    cfg, came_from = InferenceConfig(), {}
    for source, keys in layers:
        if keys:
            cfg = inference_config(cfg, source, **keys)
            came_from.update(dict.fromkeys(keys, source))
    return cfg, came_from


def resolve_inference(model_dir: PathLike | None = None, config: PathLike | None = None,
                      sets: Sequence[str] = (), src: str = "--config/--set") -> InferenceConfig:
    """defaults < ``model_dir``'s stored settings < ``config``'s inference section < ``sets``:
    the settings a prediction with that model starts from (flags are applied on top by the
    caller).  Raises :class:`ConfigError` (bad settings file, config or override)."""
    stored: list[Layer] = [] if model_dir is None else \
        [(str(settings_path(model_dir)), read_model_settings(model_dir))]
    return layered([*stored, (src, explicit_inference(config, sets))])[0]
