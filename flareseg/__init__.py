"""flareseg: partially labeled abdominal organ + pan-cancer CT segmentation on nnU-Net v2."""
__version__ = "0.1.0"
