"""Bad-input matrix rows for image reading (flareseg.io.read_image), through `flareseg evaluate`.

Every command reads images through ``read_image``; ``evaluate`` is the lightest batch command that
does.  Each row: a prediction folder with one good and one bad case, the references intact.  The
documented behaviour of evaluate (flareseg/evaluation/commands.py): exit 1 when a prediction is
unreadable, one ``case <id>: <path>: <reason>`` error line, the other cases still scored.
"""
from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from flareseg.cli import main
from flareseg.io import Geometry, write_array
from tests.bad_input import check_contract, md5_tree, run_command

GEO = Geometry((12, 10, 8), (1.5, 1.5, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _label() -> np.ndarray:
    lab = np.zeros((8, 10, 12), np.uint8)
    lab[2:6, 2:7, 2:6] = 1
    lab[3:6, 3:8, 7:11] = 3
    return lab


def _flip(p: Path, at: int) -> None:
    b = bytearray(p.read_bytes())
    b[at] ^= 0xFF
    p.write_bytes(bytes(b))


def _cut(p: Path, keep: float | int) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: int(len(b) * keep) if isinstance(keep, float) else len(b) - keep])


def _nifti_pixdim(p: Path, axis: int, value: float) -> None:
    """Set pixdim[axis] in a .nii or .nii.gz header."""
    gz = p.name.endswith(".gz")
    b = bytearray(gzip.decompress(p.read_bytes()) if gz else p.read_bytes())
    struct.pack_into("<f", b, 76 + 4 * axis, value)
    p.write_bytes(gzip.compress(bytes(b)) if gz else bytes(b))


def _float_with(value: float):
    def make(d: Path) -> Path:
        arr = _label().astype(np.float32)
        arr[4, 4, 4] = value
        return write_array(arr, GEO, d / "bad.nii.gz")
    return make


def _written(name: str, compress: bool, then) -> callable:
    def make(d: Path) -> Path:
        p = write_array(_label(), GEO, d / name, compress=compress)
        then(p)
        return p
    return make


def _mhd_data_cut(d: Path) -> Path:
    write_array(_label(), GEO, d / "bad.mhd")
    _cut(d / "bad.zraw", 5)
    return d / "bad.zraw"


def _mha_spacing(value: str):
    def then(p: Path) -> None:
        p.write_bytes(re.sub(rb"ElementSpacing = \S+ \S+ \S+", f"ElementSpacing = 1.5 {value} 3".encode(),
                             p.read_bytes()))
    return then


# id: (make the bad prediction in a folder -> the file the message must name, reason)
ROWS = {
    "nii_gz_crc_broken": (_written("bad.nii.gz", True, lambda p: _flip(p, len(p.read_bytes()) - 6)),
                          "corrupt file"),
    "nii_gz_length_broken": (_written("bad.nii.gz", True, lambda p: _flip(p, len(p.read_bytes()) - 2)),
                             "corrupt file"),
    "nii_gz_deflate_corrupted": (_written("bad.nii.gz", True, lambda p: _flip(p, len(p.read_bytes()) // 2)),
                                 "corrupt file"),
    "nii_gz_truncated_third": (_written("bad.nii.gz", True, lambda p: _cut(p, 1 / 3)), "corrupt file"),
    "nii_truncated": (_written("bad.nii", False, lambda p: _cut(p, 100)), "corrupt file (truncated"),
    "nii_spacing_zero": (_written("bad.nii", False, lambda p: _nifti_pixdim(p, 1, 0.0)),
                         "invalid voxel spacing"),
    "nii_gz_spacing_negative": (_written("bad.nii.gz", True, lambda p: _nifti_pixdim(p, 3, -3.0)),
                                "invalid voxel spacing"),
    "nii_gz_spacing_nan": (_written("bad.nii.gz", True, lambda p: _nifti_pixdim(p, 2, float("nan"))),
                           "invalid voxel spacing"),
    "nii_gz_float_nan_voxel": (_float_with(float("nan")), "holds 1 NaN/inf voxels"),
    "nii_gz_float_inf_voxel": (_float_with(float("inf")), "holds 1 NaN/inf voxels"),
    "mha_compressed_corrupt": (_written("bad.mha", True, lambda p: _flip(p, len(p.read_bytes()) - 3)),
                               "corrupt file"),
    "mha_spacing_zero": (_written("bad.mha", False, _mha_spacing("0")), "invalid voxel spacing"),
    "mhd_data_file_truncated": (_mhd_data_cut, "corrupt file"),
    "nrrd_truncated": (_written("bad.nrrd", False, lambda p: _cut(p, 50)), "corrupt file (truncated"),
    "nrrd_gzip_truncated": (_written("bad.nrrd", True, lambda p: _cut(p, 0.5)), "corrupt file"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_evaluate_reports_the_bad_image_and_scores_the_good_one(row, tmp_path, capsys, caplog):
    make, reason = ROWS[row]
    pred, gt, out = tmp_path / "pred", tmp_path / "gt", tmp_path / "out"
    for case in ("bad", "good"):
        write_array(_label(), GEO, gt / f"{case}.nii.gz")
    write_array(_label(), GEO, pred / "good.nii.gz")
    named = make(pred)
    before = md5_tree([pred, gt])
    res = run_command(main, ["evaluate", "--pred", pred, "--gt", gt, "--out", out, "--classes", "1", "3"],
                      capsys, caplog)
    check_contract(res, rc=1, names=[named.name, "case bad"], reason=reason, inputs_before=before,
                   inputs=[pred, gt], outputs=[out], done=[out / "per_case.csv"])
    scored = (out / "per_case.csv").read_text()
    assert "good,1," in scored and "bad," not in scored
    assert "cases scored: 1" in res.stdout
