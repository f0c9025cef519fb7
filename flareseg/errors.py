"""The error every reader raises for a bad input file (torch- and SimpleITK-free)."""
from __future__ import annotations

import os


class InputError(ValueError):
    """Bad input file; the message names the file and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
