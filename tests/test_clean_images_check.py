"""`flareseg clean --images`: the CT used for the body mask passes the same plausibility check as
predict's and import's readers (issue 24): signed data declared unsigned (air -1000 read as 64536)
would make the abdominal-region rule keep or drop tumors by a garbage body mask."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flareseg.cli import main
from flareseg.labels import TUMOR

SPACING = (1.5, 1.5, 3.0)


def _write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    sitk.WriteImage(img, str(path))
    return path


def _tumor_only_case(tmp_path: Path, ct: np.ndarray) -> tuple[Path, Path]:
    """A tumor-only label (needs the CT's body mask) and its CT."""
    lab = np.zeros(ct.shape, np.uint8)
    lab[5:9, 12:16, 12:16] = TUMOR
    labels, images = tmp_path / "labels", tmp_path / "images"
    _write(labels / "t.nii.gz", lab)
    _write(images / "t_0000.nii.gz", ct)
    return labels, images


def _ct() -> np.ndarray:
    ct = np.full((20, 40, 40), -1000, np.int16)
    ct[:, 8:32, 8:32] = 40
    return ct


def test_clean_refuses_a_ct_that_is_not_plausible(tmp_path, capsys):
    wrapped = _ct().view(np.uint16)            # signed HU stored as unsigned: air is 64536
    labels, images = _tumor_only_case(tmp_path, wrapped)
    out = tmp_path / "out"
    rc = main(["clean", "--labels", str(labels), "--images", str(images), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1                             # the case is an error, reported; nothing cleaned for it
    line = next(x for x in err.splitlines() if "not plausible as CT" in x)
    assert str(images / "t_0000.nii.gz") in line
    assert not (out / "labels" / "t.nii.gz").exists()


def test_clean_accepts_a_plausible_ct(tmp_path, capsys):
    labels, images = _tumor_only_case(tmp_path, _ct())
    out = tmp_path / "out"
    assert main(["clean", "--labels", str(labels), "--images", str(images), "--out", str(out)]) == 0
    assert (out / "labels" / "t.nii.gz").is_file()
