"""``flareseg statistics`` and ``flareseg.statistics`` on the shared real CT, checked against numpy
(issue 27 item 2)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import flareseg
from flareseg.cli import main
from flareseg.labels import CLASS_NAMES, TUMOR

CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "ts_example_ct_sm.nii.gz"
ORGANS = CT.with_name("ts_example_ct_sm_seg_flare.nii.gz")
pytestmark = pytest.mark.skipif(not CT.exists(), reason="shared real CT not present")


def _ball(shape, centre, r) -> np.ndarray:
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The real CT, its organ labels plus two tumors I place in the liver: (ct, seg path, seg array,
    tumor masks largest first)."""
    d = tmp_path_factory.mktemp("stats")
    ct = sitk.ReadImage(str(CT))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(ORGANS))).astype(np.uint8)
    zz, yy, xx = np.nonzero(lab == 1)
    c = (int(np.median(zz)), int(np.median(yy)), int(np.median(xx)))
    big = _ball(lab.shape, c, 3) & (lab == 1)
    small = _ball(lab.shape, (c[0], c[1] + 8, c[2] + 8), 1) & (lab == 1)
    assert big.sum() > small.sum() > 0 and not (big & small).any()
    lab[big | small] = TUMOR
    img = sitk.GetImageFromArray(lab)
    img.CopyInformation(ct)
    seg = d / "seg.nii.gz"
    sitk.WriteImage(img, str(seg))
    return d, seg, lab, [big, small]


def _hu(v: np.ndarray) -> dict:
    v = v.astype(np.float64)
    p = np.percentile(v, (5, 50, 95))
    return {"mean": round(v.mean(), 2), "std": round(v.std(), 2), "min": round(v.min(), 2),
            "max": round(v.max(), 2), "p5": round(p[0], 2), "p50": round(p[1], 2), "p95": round(p[2], 2)}


def test_statistics_match_numpy_on_the_real_ct(case):
    _, seg, lab, tumors = case
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(CT)))
    voxel_ml = float(np.prod(sitk.ReadImage(str(CT)).GetSpacing())) / 1000
    s = flareseg.statistics(CT, seg)
    for idx, name in CLASS_NAMES.items():
        if idx == 0:
            continue
        n = int((lab == idx).sum())
        assert s["voxels"][name] == n
        assert s["volumes_ml"][name] == pytest.approx(n * voxel_ml, abs=1e-3)
        assert s["hu"][name] == (_hu(hu[lab == idx]) if n else None), name
    comps = s["tumor"]["component_list"]
    assert s["tumor"]["components"] == 2 and [c["voxels"] for c in comps] == [int(t.sum()) for t in tumors]
    for c, t in zip(comps, tumors):
        assert c["hu"] == _hu(hu[t])
        assert c["centroid_zyx"] == pytest.approx(np.argwhere(t).mean(0), abs=0.01)


def test_api_takes_images_and_arrays_alike(case):
    _, seg, lab, _ = case
    ct = sitk.ReadImage(str(CT))
    a = flareseg.statistics(CT, seg)
    b = flareseg.statistics(ct, sitk.ReadImage(str(seg)))
    c = flareseg.statistics(sitk.GetArrayFromImage(ct), lab, spacing_zyx=ct.GetSpacing()[::-1])
    d = flareseg.statistics(ct, lab)   # the array takes the image's geometry
    for x in (b, c, d):
        assert {k: v for k, v in x.items() if k not in ("image", "segmentation")} == \
               {k: v for k, v in a.items() if k not in ("image", "segmentation")}
    with pytest.raises(ValueError, match="spacing_zyx"):
        flareseg.statistics(sitk.GetArrayFromImage(ct), lab)


def test_command_writes_what_the_api_returns(case, capsys):
    d, seg, _, _ = case
    out = d / "out" / "stats.json"
    assert main(["statistics", "-i", str(CT), "-s", str(seg), "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(flareseg.statistics(CT, seg)))
    assert main(["statistics", "-i", str(CT), "-s", str(seg)]) == 0   # no -o: stdout
    assert json.loads(capsys.readouterr().out)["tumor"]["components"] == 2


def test_geometry_must_match_and_output_is_never_an_input(case, capsys):
    d, seg, lab, _ = case
    moved = sitk.GetImageFromArray(lab)
    moved.CopyInformation(sitk.ReadImage(str(CT)))
    moved.SetOrigin(tuple(o + 5.0 for o in moved.GetOrigin()))
    sitk.WriteImage(moved, str(d / "moved.nii.gz"))
    assert main(["statistics", "-i", str(CT), "-s", str(d / "moved.nii.gz")]) == 2
    assert "origin" in capsys.readouterr().err
    before = seg.read_bytes()
    assert main(["statistics", "-i", str(CT), "-s", str(seg), "-o", str(seg)]) == 2
    assert "is an input" in capsys.readouterr().err and seg.read_bytes() == before
