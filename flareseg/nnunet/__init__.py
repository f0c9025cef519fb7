"""nnU-Net v2 glue: the only subpackage that imports nnunetv2 (plans, preprocessing, trainer, model loading)."""
