"""nnU-Net's three folders, passed explicitly and exported to the environment only at the process
boundary (nnunetv2 >= 2.6 reads ``os.environ`` lazily, so setting them here is enough), and the
layout nnU-Net expects inside them (the one place that spells it)::

    <raw>/<DatasetNNN_Name>/                     dataset.json, imagesTr/, labelsTr/
    <preprocessed>/<DatasetNNN_Name>/nnUNetPlans.json
    <preprocessed>/<DatasetNNN_Name>/nnUNetPlans_<configuration>/   preprocessed cases
    <results>/<DatasetNNN_Name>/FlareSegTrainer__nnUNetPlans__<configuration>/fold_<f>/
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: nnU-Net's plans identifier (file ``nnUNetPlans.json``, data folders ``nnUNetPlans_<configuration>``)
PLANS_NAME = "nnUNetPlans"
#: our trainer class, as nnU-Net names it (results folders, ``nnUNetv2_predict -tr``)
TRAINER = "FlareSegTrainer"


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


def raw_dataset(raw: Path, dataset_name: str) -> Path:
    """The raw dataset folder ``<raw>/<DatasetNNN_Name>``."""
    return Path(raw) / dataset_name


def preprocessed_dataset(preprocessed: Path, dataset_name: str) -> Path:
    """The preprocessed dataset folder ``<preprocessed>/<DatasetNNN_Name>`` (plans, fingerprint,
    ``label_types.json``, one data folder per configuration)."""
    return Path(preprocessed) / dataset_name


def plans_file(preprocessed_dataset_dir: Path) -> Path:
    """The plans of a preprocessed dataset folder."""
    return Path(preprocessed_dataset_dir) / f"{PLANS_NAME}.json"


def preprocessed_data(preprocessed_dataset_dir: Path, configuration: str) -> Path:
    """The preprocessed cases of one configuration."""
    return Path(preprocessed_dataset_dir) / f"{PLANS_NAME}_{configuration}"


def model_folder(results: Path, dataset_name: str, configuration: str) -> Path:
    """The model folder our trainer writes for one configuration (``fold_<f>`` folders inside)."""
    return Path(results) / dataset_name / f"{TRAINER}__{PLANS_NAME}__{configuration}"
