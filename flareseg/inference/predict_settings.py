"""The inference settings a prediction runs with, and where each came from.

    defaults < the model folder's settings (flareseg_inference.json) < the --config file's
    inference keys present in the file < --set inference.KEY=VALUE < the shortcut flags / the
    API's keywords

``flareseg predict`` and :func:`flareseg.predict` both resolve here; the run report holds the
resolved settings (``inference``) and, per key that some layer set, the layer that set it last
(``inference_from``): the model folder's keys that differ from the defaults, and every key the
config file, ``--set``, a flag or a keyword names (even to its default value); a key not listed is
the default.
"""
from __future__ import annotations

import os
from typing import Sequence

from flareseg.config import InferenceConfig, to_dict
from flareseg.inference.model_settings import (Layer, explicit_inference, layered, read_model_settings,
                                              settings_path)

def resolve_settings(model: str | os.PathLike, config: str | os.PathLike | None = None,
                     sets: Sequence[str] = (), overrides: Sequence[Layer] = ()
                     ) -> tuple[InferenceConfig, dict[str, str]]:
    """A prediction's :class:`InferenceConfig` with the model folder ``model``: defaults < its
    stored settings < ``config``'s inference keys present in the file < ``sets``
    (``inference.KEY=VALUE``) < ``overrides`` (the flags or keywords, each a layer), and key ->
    where it came from (:func:`layered`).  Raises :class:`flareseg.config.ConfigError` naming the
    file or option and the key."""
    defaults = to_dict(InferenceConfig())   # the folder stores every key: its defaults set nothing
    stored = {k: v for k, v in read_model_settings(model).items() if v != defaults.get(k)}
    layers: list[Layer] = [(f"model folder settings {settings_path(model)}", stored)]
    if config is not None:
        layers.append((f"config {config}", explicit_inference(config)))
    if sets:
        layers.append(("--set", explicit_inference(None, sets)))
    return layered([*layers, *overrides])
