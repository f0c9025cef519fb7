"""Discovery shim for stock nnU-Net (``nnUNet_extTrainer`` points at this folder)."""
from flareseg.nnunet.trainer import FlareSegTrainer  # noqa: F401

__all__ = ["FlareSegTrainer"]
