"""bench.real_ct_dsc's scoring and bench.skipping_evidence's table: what the evidence numbers rest on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.real_ct_dsc import class_dsc, summary, table
from bench.skipping_evidence import render


def test_real_ct_scores_per_class_and_goal():
    ref = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2, :2] = 1          # liver 4 voxels
    ref[1, :2, :2] = 3          # spleen 4 voxels
    ref[1, 2:, 2:] = 2          # right kidney 4 voxels
    ref[0, 2:, 2:] = 13         # left kidney 4
    pred = ref.copy()
    pred[1, 2:, 2:] = 0         # right kidney missed
    pred[0, 0, 3] = 4           # a pancreas voxel the reference lacks
    s = class_dsc(pred, ref)
    assert s[1]["dsc"] == 1.0 and s[2]["dsc"] == 0.0 and s[2]["pred_voxels"] == 0
    assert s[4] == {"ref_voxels": 0, "pred_voxels": 1, "dsc": 0.0} and s[5]["dsc"] is None
    m = summary(s)
    assert m["goal_min"] == 0.0 and m["goal_met"] is False
    assert m["mean_present"] == np.mean([1.0, 0.0, 1.0, 1.0])          # classes in the reference
    pred[1, 2:, 2:] = 2
    assert summary(class_dsc(pred, ref))["goal_met"] is True
    rows = table(s)
    assert rows[2].startswith("| 1 liver | 4 | 4 | 1.000") and "| 5 aorta | 0 | 0 | – |" in rows


def test_skipping_table_totals_and_time_saved():
    case = {"shape": [100, 10, 10], "spacing": [2.0, 2.0, 5.0], "seconds": {"skip": 6.0, "noskip": 10.0},
            "windows": {"windows_total": 50, "windows_skipped": 20, "planes_total": 10, "planes_skipped": 4,
                        "planes_grown": 1},
            "dice_skip_vs_noskip": {1: 1.0, 3: 0.99}, "voxels_changed": 7,
            "noskip_vs_truth": {1: 0.9}, "skip_vs_truth": {1: 0.9}}
    text = "\n".join(render({"150 mm, 1 voxel": {"A": case, "B": case}}))
    assert "| 150 mm, 1 voxel | A | 500 mm | 20 / 50 (40 %) | 4 / 10 (grown 1) | 10.00 | 6.00 | 40 % | 7 |" in text
    assert "**40 / 100 (40 %)** | | 20.00 | 12.00 | **40 %**" in text
    assert "| 150 mm, 1 voxel | 3 spleen | 0.9900 (n=2) | – | – |" in text


def test_real_ct_probe_versions_move_one_organ_at_a_time():
    """bench.real_ct_probe: each version of the CT changes only what its name says, to the
    phantoms' published centres, and the original array is left alone."""
    from bench.real_ct_probe import centre, versions
    from flareseg.data.phantom_anatomy import ADULT_ORGAN_HU
    rng = np.random.default_rng(1)
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[:, :3, :3], labels[:, 5:, 5:], labels[:, :3, 5:], labels[:, 5:, :3] = 1, 2, 3, 13
    hu = rng.normal(0.0, 20.0, labels.shape).astype(np.float32)
    hu[labels == 2] += 14.0
    hu[labels == 3] += 35.0
    before = hu.copy()
    v = versions(hu, labels)
    np.testing.assert_array_equal(hu, before)
    assert centre(2, "plain") == sum(ADULT_ORGAN_HU[2][0]) / 2 and centre(2, "portal") == sum(ADULT_ORGAN_HU[2][2]) / 2
    names = list(v)
    np.testing.assert_array_equal(v[names[0]], hu)
    np.testing.assert_allclose(v[names[1]] - hu, 15.0, atol=1e-4)
    kidneys, spleen, rest = np.isin(labels, (2, 13)), labels == 3, ~np.isin(labels, (2, 3, 13))
    kept, flat, sp, portal = v[names[2]], v[names[3]], v[names[4]], v[names[5]]
    for k in (2, 13):                                   # texture kept: the same deviations, a new median
        assert abs(np.median(kept[labels == k]) - centre(2, "plain")) < 1e-3
        np.testing.assert_allclose(np.diff(kept[labels == k]), np.diff(hu[labels == k]), atol=1e-3)
    assert abs(flat[kidneys].mean() - centre(2, "plain")) < 6 and abs(portal[kidneys].mean() - centre(2, "portal")) < 6
    assert np.corrcoef(flat[kidneys], hu[kidneys])[0, 1] < 0.5          # texture gone
    assert abs(np.median(sp[spleen]) - centre(3, "plain")) < 1e-3
    for out, changed in ((kept, kidneys), (flat, kidneys), (sp, spleen), (portal, kidneys)):
        np.testing.assert_array_equal(out[~changed], hu[~changed])
    np.testing.assert_array_equal(kept[rest], hu[rest])


def test_real_ct_probe_scores_each_phase_over_its_cases():
    from bench.real_ct_probe import rows, score_phases
    lab = np.zeros((2, 4, 4), np.uint8)
    lab[0, :2, :2], lab[1, :2, :2], lab[1, 2:, 2:], lab[0, 2:, 2:] = 1, 3, 2, 13
    miss_spleen = np.where(lab == 3, 0, lab)
    cases = [("plain", lab, lab), ("plain", miss_spleen, lab), ("portal", lab, lab)]
    got = score_phases(lambda image: image, cases)   # the "image" is the prediction here
    assert got["plain"] == {1: 1.0, 3: 0.5, 2: 1.0, 13: 1.0} and got["portal"][3] == 1.0
    table = rows("phase", got)
    assert table[0] == "| phase | liver | spleen | right_kidney | left_kidney |"
    assert table[2] == "| plain | 1.000 | 0.500 | 1.000 | 1.000 |"


def _model(tmp_path):
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    (model / "plans.json").write_text("{}")
    return model


@pytest.mark.parametrize("bench", ["bench.real_ct_dsc", "bench.real_ct_probe"])
def test_real_ct_benches_never_write_over_their_inputs(bench, tmp_path, capsys):
    """--json / --out naming a model file or landing in the model folder is refused (exit 2, one
    line) before any work; the model's files are untouched."""
    import importlib
    main = importlib.import_module(bench).main
    model = _model(tmp_path)
    ckpt = model / "fold_0" / "checkpoint_final.pth"
    for args in (["--json", str(ckpt)], ["--out", str(model / "plans.json")], ["--json", str(model / "new.json")]):
        with pytest.raises(SystemExit) as e:
            main(["--model", str(model), *args])
        assert e.value.code == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and str(model) in err
    assert ckpt.read_bytes() == b"weights" and (model / "plans.json").read_text() == "{}"
    assert sorted(p.name for p in model.rglob("*")) == ["checkpoint_final.pth", "fold_0", "plans.json"]


def test_real_ct_dsc_never_writes_over_the_scored_labels(tmp_path, capsys):
    from bench.real_ct_dsc import main
    labels = tmp_path / "labels.nii.gz"
    labels.write_bytes(b"labels")
    with pytest.raises(SystemExit) as e:
        main(["--model", str(_model(tmp_path)), "--labels", str(labels), "--json", str(labels)])
    assert e.value.code == 2 and "would overwrite the input" in capsys.readouterr().err
    assert labels.read_bytes() == b"labels"


def test_a_bench_may_rewrite_its_own_earlier_report(tmp_path):
    from bench._common import refuse_input_outputs, write_json_report
    report = tmp_path / "reports" / "dsc.json"
    report.parent.mkdir()
    write_json_report({"run": "earlier"}, report)
    refuse_input_outputs({"--json": report, "--out": None}, [tmp_path / "ct.nii.gz"], _model(tmp_path))


def _organs_scan(shape, spacing, direction, origin, corners, organ_hu, background_hu):
    """A scan with a 4-voxel cube of each swap class at ``corners`` (index z, y, x), its HU ``organ_hu``."""
    import SimpleITK as sitk
    from bench.real_ct_probe import SWAP_CLASSES
    hu = np.full(shape, background_hu, np.int16)
    lab = np.zeros(shape, np.uint8)
    for c, (z, y, x) in zip(SWAP_CLASSES, corners):
        lab[z:z + 4, y:y + 4, x:x + 4] = c
        hu[z:z + 4, y:y + 4, x:x + 4] = organ_hu
    out = []
    for a in (hu, lab):
        im = sitk.GetImageFromArray(a)
        im.SetSpacing(spacing), im.SetDirection(direction), im.SetOrigin(origin)
        out.append(im)
    return out


def test_real_ct_probe_swaps_move_the_organ_with_its_surroundings_in_physical_space():
    """--swap: the organ and its margin land on the other scan's organ (physical centres, across a
    flipped direction and another spacing), only the pasted region changes, and the four scores
    follow an organ-driven model: one that knows only the 'real' organ's HU finds it in either scan."""
    import SimpleITK as sitk
    from bench.real_ct_probe import SWAP_CLASSES, SWAPS, around, centroid_mm, dsc_within, paste, score_swaps
    real, real_lab = _organs_scan((16, 24, 24), (2.0, 2.0, 2.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (40.0, 40.0, 0.0),
                                  [(2, 3, 3), (6, 12, 14), (10, 16, 4)], 100, 0)
    ph, ph_lab = _organs_scan((20, 30, 30), (2.0, 2.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (-20.0, -20.0, 4.0),
                              [(3, 20, 20), (12, 4, 8), (8, 14, 22)], -50, 20)
    image, region, truth = paste(real, real_lab, ph, ph_lab, 2, margin_mm=2.0)
    got = sitk.GetArrayFromImage(image)
    before = sitk.GetArrayFromImage(ph)
    assert (got[~region] == before[~region]).all() and region.sum() > (truth == 2).sum() > 0
    assert np.allclose(centroid_mm(ph_lab, 2), np.asarray(ph_lab.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in np.argwhere(truth == 2).mean(0)[::-1]])), atol=1.0)
    assert (got[truth == 2] == 100).all()                          # the real organ's HU, on the phantom's grid
    assert around(ph_lab, 2, 0.0).sum() == 64
    assert dsc_within(truth, truth, region, 2) == 1.0 and dsc_within(np.zeros_like(truth), truth, region, 2) == 0.0

    def knows_the_real_organs(im):          # every class where the 'real' HU is, by position
        a = sitk.GetArrayFromImage(im)
        lab = sitk.GetArrayFromImage(real_lab) if a.shape == (16, 24, 24) else sitk.GetArrayFromImage(ph_lab)
        return np.where(a == 100, np.maximum(lab, 1), 0).astype(np.uint8)

    s = score_swaps(knows_the_real_organs, real, real_lab, [(ph, ph_lab)], margin_mm=2.0)
    assert list(s) == list(SWAPS) and set(s[SWAPS[0]]) == set(SWAP_CLASSES)
    for c in SWAP_CLASSES:
        assert s["real organ in the real CT"][c] == 1.0 and s["phantom organ in its phantom"][c] == 0.0
        assert s["phantom organ in the real CT"][c] == 0.0
    assert s["real organ in a phantom"][2] == 1.0


@pytest.mark.parametrize("flag", [["--swap", "-1"], ["--phases", "-2"], ["--margin", "-5"], ["--margin", "nan"]])
def test_real_ct_probe_refuses_a_negative_count_or_margin(flag, tmp_path, capsys):
    from bench.real_ct_probe import main
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path), *flag])
    assert e.value.code == 2 and "--margin a distance >= 0 mm" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["truncated", "other grid"])
def test_real_ct_dsc_refuses_labels_it_cannot_trust(problem, tmp_path):
    """A truncated label file (SimpleITK would read zeros or garbage) or labels on another grid
    than the CT: one line naming the file, exit 2, before the model is loaded."""
    import subprocess
    import sys
    import SimpleITK as sitk
    ct = sitk.GetImageFromArray(np.zeros((6, 8, 8), np.int16))
    ct.SetSpacing((1.5, 1.5, 3.0))
    image, labels = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    sitk.WriteImage(ct, str(image))
    lab = sitk.GetImageFromArray(np.ones((6, 8, 8), np.uint8))
    lab.CopyInformation(ct)
    if problem == "other grid":
        lab.SetOrigin((0.0, 0.0, 30.0))
    sitk.WriteImage(lab, str(labels))
    if problem == "truncated":
        labels.write_bytes(labels.read_bytes()[:-20])
    p = subprocess.run([sys.executable, "-m", "bench.real_ct_dsc", "--model", str(_model(tmp_path)), "--image",
                        str(image), "--labels", str(labels)], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and lines[0].startswith(f"bench.real_ct_dsc: {labels}: "), lines
    assert ("corrupt" in lines[0]) if problem == "truncated" else ("not on the grid" in lines[0] and "origin" in lines[0])
