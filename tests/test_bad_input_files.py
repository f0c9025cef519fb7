"""Bad-input matrix, damaged files x every command that reads them (issue 14).

SimpleITK reads a ``.nii.gz`` with a broken CRC, a corrupted deflate stream or a file cut to a
third without an error (garbage or zeros), and reads a header spacing of 0 as 1 mm.  Every command
must refuse such a file, name it, and go on with the rest of its batch: ``import`` (as an image and
as a label), ``predict``, ``evaluate`` (as a prediction and as a reference) and ``clean``.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from bad_input import check_contract, md5_tree, run_command
from flareseg.cli import main
from flareseg.io import Geometry, write_array
from tiny_model import tiny_plans, write_model_folder

GEO = Geometry((24, 20, 10), (1.5, 1.5, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _ct() -> np.ndarray:
    arr = np.full(GEO.shape_zyx, -1000, np.int16)
    arr[:, 4:16, 4:20] = 60
    return arr


def _label() -> np.ndarray:
    lab = np.zeros(GEO.shape_zyx, np.uint8)
    lab[2:7, 5:12, 5:11] = 1
    lab[3:7, 6:12, 13:19] = 3
    return lab


# --- damage done to a valid file, in place (the reason the one-line message must give) ------------

def crc_broken(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[-6] ^= 0xFF                      # inside the gzip trailer's CRC32
    p.write_bytes(bytes(b))


def deflate_corrupted(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def truncated_third(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 3])


def spacing_zero(p: Path) -> None:
    raw = bytearray(gzip.decompress(p.read_bytes()))
    struct.pack_into("<f", raw, 76 + 4 * 2, 0.0)     # pixdim[2]: the y spacing
    p.write_bytes(gzip.compress(bytes(raw)))


DAMAGE = {crc_broken: "corrupt file", deflate_corrupted: "corrupt file",
          truncated_third: "corrupt file", spacing_zero: "invalid voxel spacing"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                              seed=1)


def _import(tmp: Path, damage, as_label: bool):
    src, out = tmp / "src", tmp / "dataset"
    for cid in ("good", "bad"):
        write_array(_ct(), GEO, src / "images" / f"{cid}_0000.nii.gz")
        write_array(_label(), GEO, src / "labels" / f"{cid}.nii.gz")
    bad = src / ("labels/bad.nii.gz" if as_label else "images/bad_0000.nii.gz")
    damage(bad)
    return dict(argv=["import", "--images", src / "images", "--labels", src / "labels", "--out", out],
                bad=bad, inputs=[src], outputs=[out],
                done=[out / "imagesTr" / "good_0000.nii.gz", out / "labelsTr" / "good.nii.gz"])


def _predict(tmp: Path, damage, model: Path):
    inp, out = tmp / "in", tmp / "out"
    write_array(_ct(), GEO, inp / "good_0000.nii.gz")
    bad = write_array(_ct(), GEO, inp / "bad_0000.nii.gz")
    damage(bad)
    return dict(argv=["predict", "-i", inp, "-o", out, "-m", model, "--device", "cpu", "-q"], bad=bad,
                inputs=[inp, model], outputs=[out], done=[out / "good.nii.gz", out / "predict_report.json"])


def _evaluate(tmp: Path, damage, damaged: str):
    pred, gt, out = tmp / "pred", tmp / "gt", tmp / "eval"
    for cid in ("good", "bad"):
        write_array(_label(), GEO, pred / f"{cid}.nii.gz")
        write_array(_label(), GEO, gt / f"{cid}.nii.gz")
    bad = (pred if damaged == "pred" else gt) / "bad.nii.gz"
    damage(bad)
    return dict(argv=["evaluate", "--pred", pred, "--gt", gt, "--out", out], bad=bad, inputs=[pred, gt],
                outputs=[out], done=[out])


def _clean(tmp: Path, damage):
    labels, out = tmp / "labels", tmp / "cleaned"
    write_array(_label(), GEO, labels / "good.nii.gz")
    bad = write_array(_label(), GEO, labels / "bad.nii.gz")
    damage(bad)
    return dict(argv=["clean", "--labels", labels, "--out", out], bad=bad, inputs=[labels], outputs=[out],
                done=[out / "labels" / "good.nii.gz"])


COMMANDS = {
    "import-image": lambda tmp, d, m: _import(tmp, d, as_label=False),
    "import-label": lambda tmp, d, m: _import(tmp, d, as_label=True),
    "predict": _predict,
    "evaluate-pred": lambda tmp, d, m: _evaluate(tmp, d, "pred"),
    "evaluate-gt": lambda tmp, d, m: _evaluate(tmp, d, "gt"),
    "clean": lambda tmp, d, m: _clean(tmp, d),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_damaged_file_is_refused_by_every_command(damage, command, tmp_path, model, capsys, caplog):
    r = COMMANDS[command](tmp_path, damage, model)
    before = md5_tree(r["inputs"])
    out = run_command(main, r["argv"], capsys, caplog)
    check_contract(out, rc=1, names=[r["bad"].name], reason=DAMAGE[damage], inputs_before=before,
                   inputs=r["inputs"], outputs=r["outputs"], done=r["done"])


def _dicom_missing_slice(shared_data: Path, dest: Path) -> Path:
    """A copy of the real DICOM series with one middle slice removed (a lost file)."""
    import shutil
    files = sorted((shared_data / "ct" / "ts_example_ct_dicom").iterdir())
    dest.mkdir(parents=True)
    for i, f in enumerate(files):
        if i != len(files) // 2:
            shutil.copy(f, dest / f.name)
    return dest


@pytest.mark.parametrize("command", ["import", "predict"])
def test_dicom_series_with_a_missing_slice_is_refused(command, tmp_path, model, shared_data, capsys, caplog):
    folder = {"import": tmp_path / "src" / "unlabeled", "predict": tmp_path / "in"}[command]
    series = _dicom_missing_slice(shared_data, folder / "patient1")
    write_array(_ct(), GEO, folder / "good_0000.nii.gz")
    if command == "import":
        out_dir = tmp_path / "dataset"
        argv = ["import", "--unlabeled", folder, "--out", out_dir]
        done = [out_dir / "imagesUnlabeled" / "good_0000.nii.gz"]
    else:
        out_dir = tmp_path / "out"
        argv = ["predict", "-i", folder, "-o", out_dir, "-m", model, "--device", "cpu", "-q"]
        done = [out_dir / "good.nii.gz"]
    before = md5_tree([folder])
    out = run_command(main, argv, capsys, caplog)
    check_contract(out, rc=1, names=[series.name], reason="non-uniform slice spacing", inputs_before=before,
                   inputs=[folder], outputs=[out_dir], done=done)
