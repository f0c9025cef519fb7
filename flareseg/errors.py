"""The errors flareseg raises for bad inputs and settings (torch- and SimpleITK-free), and the
bounded text every message shows of a user's value."""
from __future__ import annotations

import os
import reprlib

#: the most characters of a user's value a message shows (a value can be gigabytes of YAML)
MAX_VALUE_CHARS = 200
#: the longest message a config error carries (key names are user text too)
MAX_MESSAGE_CHARS = 2000

_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_VALUE_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 20


def clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters (the cut marked with ``...``)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def short_repr(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)`` for a message, in bounded time and at most ``limit`` characters: long
    strings, lists and mappings are elided (``reprlib``), deep nesting shown as ``...``."""
    return clip(_REPR.repr(value), limit)


class InputError(ValueError):
    """Bad input file; the message names the file and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type or an out-of-range value, an override is
    malformed, or the config file is missing/unreadable/not safe YAML.  One line naming the key;
    the message is bounded (:data:`MAX_MESSAGE_CHARS`)."""

    def __init__(self, message: str = ""):
        super().__init__(clip(" ".join(str(message).split("\n")), MAX_MESSAGE_CHARS))
