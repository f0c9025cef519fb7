"""Label/image geometry (issue 24): a tolerance like nnU-Net's, messages with the digits that
differ, and ``import --copy-image-geometry`` within half a voxel, logged per case."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk

from bad_input import check_contract, md5_tree, run_command
from flareseg.cli import main
from flareseg.io import (COPY_GEOMETRY_MAX_VOXELS, Geometry, copyable_geometry, geometry_mismatch,
                         grid_shift_voxels, write_array)

GEO = Geometry((12, 10, 8), (1.5, 1.5, 3.0), (-200.0, -150.0, -500.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _moved(dz_mm: float = 0.0, dy_mm: float = 0.0) -> Geometry:
    o = GEO.origin
    return Geometry(GEO.size, GEO.spacing, (o[0], o[1] + dy_mm, o[2] + dz_mm), GEO.direction)


def test_five_micrometres_is_the_same_grid_and_messages_show_the_difference():
    assert geometry_mismatch(GEO, _moved(dz_mm=0.005)) == []
    assert geometry_mismatch(GEO, _moved(dy_mm=-0.005)) == []
    why = geometry_mismatch(GEO, _moved(dz_mm=0.2, dy_mm=0.004))
    assert why == ["origin (-200, -150, -500) != (-200, -149.996, -499.8) (largest difference 0.2 mm)"]
    sp = Geometry(GEO.size, (1.5, 1.5, 3.003), GEO.origin, GEO.direction)
    assert geometry_mismatch(GEO, sp) == ["spacing (1.5, 1.5, 3) != (1.5, 1.5, 3.003) (largest difference 0.003 mm)"]


def test_copy_bound_is_half_a_voxel_anywhere_in_the_grid():
    assert grid_shift_voxels(GEO, _moved(dz_mm=0.3)) == pytest.approx(0.1)
    assert copyable_geometry(GEO, _moved(dz_mm=1.2)) is None                     # 0.4 voxel
    assert copyable_geometry(GEO, _moved(dz_mm=1.8)).startswith("copying the image's geometry would move")
    # a spacing 1 % off moves the far corner by 11 * 1 % = 0.11 voxel: copyable; 10 % is not
    assert copyable_geometry(GEO, Geometry(GEO.size, (1.515, 1.5, 3.0), GEO.origin, GEO.direction)) is None
    assert copyable_geometry(GEO, Geometry(GEO.size, (1.65, 1.5, 3.0), GEO.origin, GEO.direction))
    assert COPY_GEOMETRY_MAX_VOXELS == 0.5


def _src(tmp, label_geo: Geometry):
    src = tmp / "src"
    img = np.full(GEO.shape_zyx, -1000, np.int16)
    img[:, 2:8, 2:10] = 60
    lab = np.zeros(GEO.shape_zyx, np.uint8)
    lab[2:6, 3:7, 3:9] = 1
    for cid, g in (("good", GEO), ("moved", label_geo)):
        write_array(img, GEO, src / "images" / f"{cid}_0000.nii.gz")
        write_array(lab, g, src / "labels" / f"{cid}.nii.gz")
    return src


def test_import_accepts_a_five_micrometre_origin_difference(tmp_path, capsys, caplog):
    src, out = _src(tmp_path, _moved(dz_mm=0.005)), tmp_path / "ds"
    res = run_command(main, ["import", "--images", src / "images", "--labels", src / "labels", "--out", out],
                      capsys, caplog)
    assert res.rc == 0, res.lines
    assert (out / "labelsTr" / "moved.nii.gz").exists()


@pytest.mark.parametrize("copy", [False, True])
def test_import_copy_image_geometry_within_half_a_voxel(copy, tmp_path, capsys, caplog):
    src, out = _src(tmp_path, _moved(dz_mm=0.9)), tmp_path / "ds"   # 0.3 voxel along z
    before = md5_tree([src])
    res = run_command(main, ["import", "--images", src / "images", "--labels", src / "labels", "--out", out,
                             *(["--copy-image-geometry"] if copy else [])], capsys, caplog)
    if not copy:
        check_contract(res, rc=1, names=["moved.nii.gz", "-499.1", "--copy-image-geometry"],
                       reason="geometry does not match image moved_0000.nii.gz", inputs_before=before,
                       inputs=[src], outputs=[out], done=[out / "labelsTr" / "good.nii.gz"])
        return
    assert res.rc == 0, res.lines
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("moved.nii.gz: label geometry replaced by the image's (origin" in m for m in logged), logged
    lab = sitk.ReadImage(str(out / "labelsTr" / "moved.nii.gz"))
    assert geometry_mismatch(Geometry.of(lab), GEO) == []
    assert md5_tree([src]) == before


def test_import_refuses_to_copy_beyond_half_a_voxel(tmp_path, capsys, caplog):
    src, out = _src(tmp_path, _moved(dz_mm=2.4)), tmp_path / "ds"    # 0.8 voxel along z
    before = md5_tree([src])
    res = run_command(main, ["import", "--images", src / "images", "--labels", src / "labels", "--out", out,
                             "--copy-image-geometry"], capsys, caplog)
    check_contract(res, rc=1, names=["moved.nii.gz", "not copied"], reason="would move the label by 0.8 voxels",
                   inputs_before=before, inputs=[src], outputs=[out], done=[out / "labelsTr" / "good.nii.gz"])
