"""Tiny synthetic partially labeled CT cases for nnU-Net glue tests (seconds, not minutes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flareseg.io import Geometry, write_array

# label type per case: two organ groups and a tumor-only case
TYPES = {"t00": (1, 3, 14), "t01": (1, 3, 14), "t02": (1, 3, 14), "t03": (1, 3, 14),
         "t04": (1,), "t05": (1,), "t06": (14,), "t07": (14,)}


def tiny_case(seed: int, shape=(24, 40, 40)) -> tuple[np.ndarray, np.ndarray]:
    """(image HU int16, full label uint8): a body with a 'liver' (1), 'spleen' (3), 'tumor' (14)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    img = np.full(shape, -1000.0)
    body = ((y - 20) / 17) ** 2 + ((x - 20) / 18) ** 2 < 1
    img[body] = 0
    lab = np.zeros(shape, np.uint8)
    liver = ((z - 12) / 8) ** 2 + ((y - 18 - rng.integers(-2, 3)) / 7) ** 2 + ((x - 12) / 6) ** 2 < 1
    spleen = ((z - 12) / 6) ** 2 + ((y - 20) / 5) ** 2 + ((x - 29 - rng.integers(-2, 3)) / 4) ** 2 < 1
    lab[liver] = 1
    lab[spleen] = 3
    tumor = ((z - 12) / 2.5) ** 2 + ((y - 18) / 2.5) ** 2 + ((x - 12) / 2.5) ** 2 < 1
    lab[tumor] = 14
    img[lab == 1] = 60
    img[lab == 3] = 110
    img[lab == 14] = -20
    img += rng.normal(0, 10, shape)
    return img.astype(np.int16), lab


def write_tiny_raw(root: Path, n_unlabeled: int = 2) -> Path:
    """FLARE-style folders (imagesTr, labelsTr, unlabeledTr, manifest.csv) under ``root``."""
    geo = Geometry((40, 40, 24), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    rows = ["case_id,annotated"]
    for i, (cid, t) in enumerate(TYPES.items()):
        img, lab = tiny_case(i)
        lab = np.where(np.isin(lab, t), lab, 0).astype(np.uint8)
        write_array(img, geo, root / "imagesTr" / f"{cid}_0000.nii.gz")
        write_array(lab, geo, root / "labelsTr" / f"{cid}.nii.gz")
        rows.append(f"{cid},{' '.join(map(str, t))}")
    for j in range(n_unlabeled):
        img, _ = tiny_case(100 + j)
        write_array(img, geo, root / "unlabeledTr" / f"u{j:02d}_0000.nii.gz")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def tiny_planned_dataset(root: Path):
    """The tiny cases imported as nnU-Net dataset 901 and planned/preprocessed at a 'fine'
    configuration under ``root`` (nnU-Net paths exported): ``(NNUNetPaths, preprocessed folder)``."""
    from flareseg.config import PlanConfig
    from flareseg.data.intake import import_dataset
    from flareseg.nnunet.env import NNUNetPaths
    from flareseg.nnunet.planning import place_label_types, plan_and_preprocess

    raw = write_tiny_raw(root / "raw", n_unlabeled=0)
    paths = NNUNetPaths.under(root)
    paths.export()
    ds = paths.raw / "Dataset901_Tiny"
    import_dataset(ds, raw / "imagesTr", raw / "labelsTr", manifest=raw / "manifest.csv")
    pf = plan_and_preprocess(901, {"fine": PlanConfig((3.0, 2.0, 2.0), (16, 32, 32), 2, 4, 16)},
                             num_processes=1)
    place_label_types(ds, pf.parent)
    return paths, pf
