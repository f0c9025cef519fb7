"""`flareseg predict` user outputs: --preview PNG, --statistics HU, --per-class/--roi-subset masks,
window progress, quiet third-party logging (issue 19)."""
from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.cli import main, set_log_levels
from flareseg.config import ConfigError
from flareseg.inference.output_plan import roi_names
from flareseg.inference.preview import write_preview
from flareseg.overlay import colour_of, overlay_rgb, window
from flareseg.inference.statistics import label_statistics
from flareseg.labels import CLASS_NAMES
from tiny_model import tiny_plans, write_model_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                              seed=1)


def _ct(path, shape=(16, 40, 36), spacing=(1.5, 1.5, 2.5)):
    arr = np.full(shape, -1000, dtype=np.int16)
    arr[:, 8:32, 6:30] = 60
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((3.0, -2.0, 7.5))
    sitk.WriteImage(img, str(path))
    return img


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------ preview
def test_overlay_blends_class_colour_over_windowed_grey():
    ct = np.array([[40.0, 240.0], [-160.0, 40.0]])       # L40/W400: grey 0.5, 1, 0, 0.5
    lab = np.array([[0, 1], [14, 0]], dtype=np.uint8)
    rgb = overlay_rgb(ct, lab, alpha=0.5)
    np.testing.assert_allclose(window(ct), [[0.5, 1.0], [0.0, 0.5]])
    np.testing.assert_allclose(rgb[0, 0], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(rgb[0, 1], 0.5 * np.array(colour_of(1)) + 0.5)
    np.testing.assert_allclose(rgb[1, 0], 0.5 * np.array(colour_of(14)))


def test_preview_png_shows_each_present_class(tmp_path):
    ct = np.full((20, 30, 30), 40, dtype=np.int16)          # grey 0.5 everywhere
    lab = np.zeros(ct.shape, dtype=np.uint8)
    lab[4:16, 5:20, 5:20] = 1
    lab[4:16, 20:28, 20:28] = 3
    dest = tmp_path / "c_preview.png"
    write_preview(ct, lab, (2.5, 1.0, 1.0), CLASS_NAMES, dest, title="c")
    from flareseg.inference.preview import preview_layout
    lay = preview_layout(ct.shape, (2.5, 1.0, 1.0))      # the panels' physical sizes set the figure's
    assert np.allclose(png_size(dest), (lay.width * 100, lay.height * 100), atol=1)
    assert not list(tmp_path.glob("*.tmp*"))
    import matplotlib.image
    px = matplotlib.image.imread(str(dest))[..., :3]

    def count(colour):
        want = 0.5 * np.asarray(colour) + 0.25              # the blend over grey 0.5
        return int((np.abs(px - want).max(-1) < 2.5 / 255).sum())
    assert count(colour_of(1)) > 2000 and count(colour_of(3)) > 500     # liver, spleen overlaid
    assert count(colour_of(14)) == 0 and count(colour_of(2)) == 0       # absent classes are not
    grey = int((np.abs(px - 0.5).max(-1) < 2.5 / 255).sum())
    assert grey > 2000                                                   # the CT where no label is


def test_preview_radiological_orientation():
    from flareseg.inference.preview import display_flips
    assert display_flips(None) == (True, False, False)                          # LPS identity
    assert display_flips((-1, 0, 0, 0, -1, 0, 0, 0, 1)) == (True, True, True)   # RAS-stored NIfTI
    assert display_flips((1, 0, 0, 0, 1, 0, 0, 0, -1)) == (False, False, False)  # slices stored top-down


def test_preview_puts_the_patients_right_on_the_left(tmp_path):
    import matplotlib.image
    ct = np.full((8, 30, 30), 40, dtype=np.int16)
    lab = np.zeros(ct.shape, dtype=np.uint8)
    lab[2:6, 10:20, 0:10] = 1      # low x index: the patient's right in LPS (image left), left with x = -1
    for direction, left in (((1, 0, 0, 0, 1, 0, 0, 0, 1), True), ((-1, 0, 0, 0, -1, 0, 0, 0, 1), False)):
        write_preview(ct, lab, (1.0, 1.0, 1.0), CLASS_NAMES, tmp_path / "p.png", direction=direction)
        px = matplotlib.image.imread(str(tmp_path / "p.png"))[..., :3]
        hit = np.abs(px - (0.5 * np.asarray(colour_of(1)) + 0.25)).max(-1) < 2.5 / 255
        cols = np.nonzero(hit[:, :300].any(0))[0]                  # the first axial panel
        assert cols.size and bool(cols.mean() < 150) == left


# ------------------------------------------------------------------ statistics
def test_hu_statistics_per_class_and_tumor_component_exact():
    lab = np.zeros((6, 10, 10), dtype=np.uint8)
    img = np.full(lab.shape, -1000, dtype=np.int16)
    lab[0, :10, :10] = 1                                   # liver: 100 voxels, HU 0..99
    img[0] = np.arange(100).reshape(10, 10)
    lab[3:5, 0:2, 0:2] = 14                                # tumor A: 8 voxels, HU 10 x4 and 30 x4
    img[3:5, 0:2, 0:2] = np.array([10, 30])[:, None, None]
    lab[4, 8, 8] = 14                                      # tumor B: 1 voxel, HU 55
    img[4, 8, 8] = 55
    s = label_statistics(lab, (2.0, 1.0, 1.0), CLASS_NAMES, image=img)
    assert s["hu"]["liver"] == {"mean": 49.5, "std": 28.87, "min": 0.0, "max": 99.0, "p5": 4.95, "p50": 49.5, "p95": 94.05}
    assert s["hu"]["spleen"] is None
    # 4 x 10, 4 x 30, 1 x 55: mean 215/9, population std sqrt(1888.89/9), p95 at 7.6 of 8: 30 + 0.6 * 25
    assert s["hu"]["tumor"] == {"mean": 23.89, "std": 14.49, "min": 10.0, "max": 55.0, "p5": 10.0, "p50": 30.0, "p95": 45.0}
    comps = s["tumor"]["component_list"]
    assert [c["voxels"] for c in comps] == [8, 1] and s["tumor"]["components"] == 2
    assert comps[0]["hu"] == {"mean": 20.0, "std": 10.0, "min": 10.0, "max": 30.0, "p5": 10.0, "p50": 20.0, "p95": 30.0}
    assert comps[0]["centroid_zyx"] == [3.5, 0.5, 0.5] and comps[0]["volume_ml"] == 0.016
    assert comps[1] == {"component": 2, "voxels": 1, "volume_ml": 0.002, "centroid_zyx": [4.0, 8.0, 8.0],
                        "hu": {"mean": 55.0, "std": 0.0, "min": 55.0, "max": 55.0, "p5": 55.0, "p50": 55.0, "p95": 55.0}}
    assert "hu" not in label_statistics(lab, (2.0, 1.0, 1.0), CLASS_NAMES)   # without the image


# ------------------------------------------------------------------ per class
def test_roi_names_validated_in_class_order():
    flare = [CLASS_NAMES[i] for i in range(1, 15)]
    assert roi_names(None, False, flare) is None
    assert roi_names(None, True, flare) == flare
    assert roi_names(["tumor", "liver"], False, flare) == ["liver", "tumor"]
    with pytest.raises(ConfigError, match=r"--roi-subset livr: not a class name of the model \(valid: liver, "
                                          r"right_kidney"):
        roi_names(["liver", "livr"], False, flare)


def test_per_class_names_come_from_the_models_labels(tmp_path):
    """A model trained on other classes: --per-class writes its classes, --roi-subset accepts its names
    and refuses FLARE23 names it lacks (before anything is created)."""
    from flareseg.nnunet.folder_check import model_class_names
    md = write_model_folder(tmp_path / "m", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                            labels={0: "background", 1: "vessel", 2: "liver", 3: "lesion"}, seed=2)
    assert model_class_names(md) == ["vessel", "liver", "lesion"]
    _ct(tmp_path / "a.nii.gz")
    assert main(["predict", "-i", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "o"), "-m", str(md),
                 "--device", "cpu", "-q", "--per-class"]) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "a.nii.gz")))
    for value, name in ((1, "vessel"), (2, "liver"), (3, "lesion")):
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "a" / f"{name}.nii.gz")))
        assert np.array_equal(mask, (labels == value).astype(np.uint8)), name
    assert sorted(p.name for p in (tmp_path / "o" / "a").iterdir()) == ["lesion.nii.gz", "liver.nii.gz",
                                                                          "vessel.nii.gz"]
    assert main(["predict", "-i", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "p"), "-m", str(md),
                 "--device", "cpu", "-q", "--roi-subset", "spleen"]) == 2
    assert not (tmp_path / "p").exists()


def test_predict_preview_per_class_statistics(tmp_path, model_dir, capsys, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    img = _ct(inp / "a_0000.nii.gz")
    with caplog.at_level(logging.DEBUG):
        rc = main(["predict", "-i", str(inp), "-o", str(out), "-m", str(model_dir), "--device", "cpu",
                   "--preview", "--statistics", "--roi-subset", "stomach", "esophagus", "-q"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [".flareseg-written.jsonl", "a", "a.nii.gz", "a_preview.png",
                                                     "predict_report.json", "statistics.json"]
    assert sorted(p.name for p in (out / "a").iterdir()) == ["esophagus.nii.gz", "stomach.nii.gz"]
    labels = sitk.ReadImage(str(out / "a.nii.gz"))
    lab = sitk.GetArrayFromImage(labels)
    from flareseg.inference.preview import LEGEND_COLUMNS, preview_layout, preview_slices
    lay = preview_layout(lab.shape, labels.GetSpacing()[::-1], len(preview_slices(lab)[0]),
                         -(-len(set(np.unique(lab)) - {0}) // LEGEND_COLUMNS))
    assert np.allclose(png_size(out / "a_preview.png"), (lay.width * 100, lay.height * 100), atol=1)
    for name, idx in (("stomach", 11), ("esophagus", 10)):
        m = sitk.ReadImage(str(out / "a" / f"{name}.nii.gz"))
        assert m.GetOrigin() == img.GetOrigin() and m.GetSpacing() == img.GetSpacing()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(m), (lab == idx).astype(np.uint8))
    stats = json.loads((out / "statistics.json").read_text())["a"]
    ct = sitk.GetArrayFromImage(img)
    for name, idx in (("stomach", 11), ("esophagus", 10)):
        if (lab == idx).any():
            assert stats["hu"][name]["mean"] == round(float(ct[lab == idx].mean()), 2)
    assert stats["tumor"]["components"] == len(stats["tumor"]["component_list"])
    # stdout: the one result line, no third-party noise; no other package's INFO record without -v
    assert capsys.readouterr().out.splitlines() == [f"1/1 cases written to {out}"]
    noise = [r for r in caplog.records if not r.name.startswith("flareseg") and r.levelno < logging.WARNING]
    assert noise == []


def test_api_predict_per_class(tmp_path, model_dir):
    import flareseg
    _ct(tmp_path / "b.nii.gz")
    flareseg.predict(tmp_path / "b.nii.gz", model=model_dir, output=tmp_path / "o", device="cpu",
                     per_class=True)
    assert len(list((tmp_path / "o" / "b").glob("*.nii.gz"))) == 14
    with pytest.raises(ConfigError, match="valid: liver"):
        flareseg.predict(tmp_path / "b.nii.gz", model=model_dir, output=tmp_path / "p", roi_subset=["kidney"])
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------ progress and noise
def test_progress_counts_match_windows_run(tmp_path, model_dir):
    from flareseg.inference.predictor import FastPredictor
    img = _ct(tmp_path / "c.nii.gz")
    for skip in (False, True):
        calls = []
        res = FastPredictor(model_dir, device="cpu", skip_windows=skip, batch_windows=2).run(
            img, progress=lambda d, t: calls.append((d, t)))
        w = res.stats["windows"]
        assert calls[0] == (0, w["windows_total"])
        assert {t for _, t in calls} == {w["windows_total"]}
        done = [d for d, _ in calls]
        assert done == sorted(done) and done[-1] == w["windows_run"]
        assert all(b - a in (1, 2) for a, b in zip(done[1:], done[2:]))   # one call per batch


def test_third_party_info_only_with_verbose(caplog):
    try:
        set_log_levels(False)
        with caplog.at_level(logging.INFO):
            logging.getLogger("numexpr.utils").info("NumExpr defaulting to 2 threads.")
            logging.getLogger("nnunetv2.x").info("copying")
            logging.getLogger("flareseg.y").info("ours")
        assert [r.getMessage() for r in caplog.records] == ["ours"]
        set_log_levels(True)
        assert logging.getLogger("numexpr").level == logging.NOTSET   # the root level decides again
    finally:
        set_log_levels(False)


@pytest.mark.parametrize("verbose", [False, True])
def test_real_numexpr_line_only_with_verbose(verbose):
    """NumExpr logs "NumExpr defaulting to N threads." at import when no thread variable is set."""
    import os
    import subprocess
    import sys
    pytest.importorskip("numexpr")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMEXPR_NUM_THREADS", "OMP_NUM_THREADS", "NUMEXPR_MAX_THREADS")}
    code = f"from flareseg.cli import set_log_levels; set_log_levels({verbose}); import numexpr"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert ("NumExpr defaulting to" in r.stderr) is verbose
