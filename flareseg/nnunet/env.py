"""nnU-Net's three folders, passed explicitly and exported to the environment only at the process
boundary (nnunetv2 >= 2.6 reads ``os.environ`` lazily, so setting them here is enough)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NNUNetPaths:
    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, root: Path) -> "NNUNetPaths":
        root = Path(root).resolve()
        return cls(root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results")

    def export(self) -> None:
        """Create the folders and point nnU-Net's environment variables at them; also make our
        trainer discoverable by stock nnU-Net (``nnUNet_extTrainer``)."""
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)
        os.environ["nnUNet_raw"] = str(self.raw)
        os.environ["nnUNet_preprocessed"] = str(self.preprocessed)
        os.environ["nnUNet_results"] = str(self.results)
        os.environ["nnUNet_extTrainer"] = trainer_dir()


def trainer_dir() -> str:
    """Folder holding our nnU-Net trainer classes, for ``nnUNet_extTrainer``."""
    return str(Path(__file__).resolve().parent / "trainers")
