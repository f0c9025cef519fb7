"""QC report: a self-contained static page over full, partial, empty and broken work folders."""
from __future__ import annotations

import json
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from flareseg.cli import main as cli_main
from flareseg.io import Geometry, InputError, write_array
from flareseg.work_layout import STAGE_NAMES, stage_dir
from flareseg.report import build_qc_report
from flareseg.report.figures import describe_type, validation_overlay
from flareseg.report.context import local_path
from flareseg.report.validation import case_mean_dsc, worst_and_best

OLD_ROOT = "/nonexistent/old-run"      # manifests record absolute paths of the run's original place
GEO = Geometry((16, 16, 6), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))  # (x, y, z)


def _png(path: Path) -> None:
    """Write a valid 1x1 grey PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _old(work: Path, p: Path) -> str:
    """``p`` as the manifest of a run that lived at OLD_ROOT recorded it."""
    return f"{OLD_ROOT}/{p.relative_to(work).as_posix()}"


def _manifest(work: Path, n: int, result: dict) -> None:
    _write(stage_dir(work, n) / "manifest.json", json.dumps(
        {"stage": n, "name": STAGE_NAMES[n], "key": f"k{n}", "config_hash": "c0ffee", "result": result,
         "versions": {"flareseg": "0.1.0"}, "timings": {"total_seconds": 1.5}, "finished": "2025-01-01T00:00:00"}))


TRAINING = {"trainer": "FlareSegTrainer", "epochs": 3, "final_train_loss": 0.5, "final_val_loss": 0.4,
            "val_pseudo_dice": {"liver": 0.91, "tumor": None}}


def _reference() -> np.ndarray:
    ref = np.zeros((6, 16, 16), np.uint8)
    ref[2:4, 4:10, 4:10] = 1
    ref[3, 11:13, 11:13] = 14
    return ref


def make_work(work: Path, stages=(1, 2, 3, 4, 5, 6)) -> Path:
    """A fake work folder: manifests plus the small files each stage writes."""
    s1 = stage_dir(work, 1)
    ds = s1 / "nnUNet_raw" / "Dataset900_Fake"
    img_dir, lab_dir = s1 / "phantoms" / "imagesVal", s1 / "phantoms" / "labelsVal"
    if 1 in stages:
        _write(ds / "label_types.json", json.dumps({"A1": [4, 14], "A2": [4, 14], "T1": [14],
                                                    "F1": list(range(1, 15))}))
        _write(ds / "cases.json", json.dumps({"labeled": ["A1", "A2", "F1"], "tumor_only": ["T1"],
                                              "unlabeled": ["U1", "U2"]}))
        _write(ds / "import_report.json", json.dumps({"bad": [{"case_id": "BAD1", "reason": "label grid differs"}]}))
        ref = _reference()
        for case in ("VA", "VB"):
            write_array(np.full((6, 16, 16), 40, np.int16), GEO, img_dir / f"{case}_0000.nii.gz")
            write_array(ref, GEO, lab_dir / f"{case}.nii.gz")
        _manifest(work, 1, {
            "dataset": _old(work, ds), "import": {"ok": 6, "bad": 1, "label_type_source": "manifest"},
            "validation_images": _old(work, img_dir), "validation_labels": _old(work, lab_dir),
            "plans": {"configurations": {"fine": {"spacing": [2.5, 0.82, 0.82], "patch_size": [32, 192, 192],
                                                  "batch_size": 4}}},
            "training": TRAINING})
    if 2 in stages:
        rep = stage_dir(work, 2) / "report"
        _png(rep / "uncertainty_hist.png")
        _png(rep / "overlays" / "most_0001_U1.png")
        _write(rep / "selection.csv", "case_id,organ_rank,organ_score,selected,tumor_rank,tumor_score,keep_tumor,"
               "label_type\nU1,1,0.1,1,1,0.2,1,1_14\nU2,2,0.3,0,,0.4,0,\n")
        _write(rep / "pseudo_label_quality.json", json.dumps({"cases": 2, "mean_organ_dice_selected": 0.8}))
        _manifest(work, 2, {"unlabeled": 2, "scored": 2, "failed": 0, "selected": 1, "tumor_kept": 1, "filled": 1})
    if 3 in stages:
        s3 = stage_dir(work, 3)
        _write(s3 / "pool" / "index.json", json.dumps({
            "spacing_zyx": [2.5, 1.5, 1.5],
            "objects": [{"id": "T1_t001", "voxels": 40, "volume_mm3": 225.0, "organs_touched": [1, 4]}],
            "rejected": [{"id": "T1_t002", "reason": "too small"}]}))
        _png(s3 / "qc" / "cto_gallery.png")
        _manifest(work, 3, {"pool_dir": _old(work, s3 / "pool"), "source_cases": 3, "objects": 1, "rejected": 1,
                            "errors": 0})
    if 4 in stages:
        s4 = stage_dir(work, 4)
        _write(s4 / "cleaning_report.csv", "case,class,class_name,voxels,volume_mm3,reason,distance_mm,bbox_zyx\n"
               "A1,4,pancreas,7,2.0,small_component,,\nT1,14,tumor,300,80.0,far_from_organs,35.0,\n")
        _write(s4 / "cleaning_summary.csv", "case,file,status,foreground_voxels,components_removed,voxels_removed,"
               "small_component,outside_abdomen,far_from_organs,error\nA1,A1.nii.gz,ok,900,1,7,1,0,0,\n"
               "T1,T1.nii.gz,ok,500,1,300,0,0,1,\nX9,X9.nii.gz,error,,,,,,,unreadable label\n")
        _manifest(work, 4, {"cases": {"gt": 4, "pseudo": 1}, "removed_components": 2,
                            "removed_by_reason": {"small_component": 1, "far_from_organs": 1}})
    if 5 in stages:
        s5 = stage_dir(work, 5)
        ds5 = s5 / "nnUNet_raw" / "Dataset901_FakeCoarse"
        _write(ds5 / "label_types.json", json.dumps({"A1": [4, 14], "U1": list(range(1, 15))}))
        _png(s5 / "qc" / "cutmix_samples.png")
        _manifest(work, 5, {"dataset": _old(work, ds5), "training": TRAINING})
    if 6 in stages:
        s6 = stage_dir(work, 6)
        ref = _reference()
        write_array(ref, GEO, s6 / "predictions" / "VA.nii.gz")                    # perfect
        write_array(np.zeros_like(ref), GEO, s6 / "predictions" / "VB.nii.gz")     # empty
        _write(s6 / "evaluation" / "per_case.csv", "case,class,name,dsc,nsd\nVA,1,liver,1.0,1.0\n"
               "VA,14,tumor,1.0,1.0\nVB,1,liver,0.0,0.0\nVB,14,tumor,0.0,0.0\n")
        summary = {"n_cases": 2, "per_class": {"1": {"name": "liver", "dsc": 0.5, "nsd": 0.5},
                                               "14": {"name": "tumor", "dsc": 0.5, "nsd": 0.5}},
                   "organ_mean": {"dsc": 0.5, "nsd": 0.5}, "tumor": {"dsc": 0.5, "nsd": 0.5},
                   "overall": {"dsc": 0.5, "nsd": 0.5}, "missing": [], "extra": [], "errors": {}}
        _write(s6 / "evaluation" / "summary.json", json.dumps(summary))
        _write(s6 / "efficiency" / "efficiency.csv", "case,returncode,timed_out,wall_s,rss_peak_mb,gpu_max_mb,"
               "gpu_auc_mb_s\nVA,0,False,12.5,1100.0,,\nVB,0,False,9.5,1000.0,,\n")
        _write(s6 / "efficiency" / "efficiency.json", json.dumps({"summary": {"n_cases": 2, "wall_s_mean": 11.0}}))
        _write(s6 / "ship_report.json", "{}")
        _manifest(work, 6, {"evaluation": summary, "windows_total": 40, "windows_skipped": 10})
    return work


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [a[k] for k in ("href", "src") if a.get(k)]
        if a.get("id"):
            self.ids.add(a["id"])


def check_page(page: Path) -> str:
    """Every link is relative and resolves inside the report folder; returns the page text."""
    text = page.read_text()
    p = _Links()
    p.feed(text)
    assert p.links, "the page links nothing"
    for href in p.links:
        if href.startswith("#"):
            assert href[1:] in p.ids, f"anchor {href} has no target"
            continue
        assert "://" not in href and not href.startswith("/") and ".." not in href, href
        target = page.parent / href
        assert target.is_file(), f"{href} does not resolve"
        if href.endswith(".png"):
            assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{href} is not a PNG"
    for n in STAGE_NAMES:
        assert f'id="stage-{n}"' in text
    return text


def _status_lines(text: str) -> list[str]:
    return re.findall(r'<p class="status [a-z]+">([^<]*)</p>', text)


def test_full_work_folder_has_every_section(tmp_path):
    work = make_work(tmp_path / "w")
    page = build_qc_report(work)
    assert page == work / "qc" / "index.html"
    text = check_page(page)
    assert all(s.startswith("done") for s in _status_lines(text)) and len(_status_lines(text)) == 6
    for expected in ("stage-1/label_types.png", "import errors (1)", "label grid differs", "pancreas + tumor",
                     "tumor only", "validation pseudo-Dice", "stage-2/uncertainty_hist.png",
                     "selection (1 of 2 selected)", "mean organ dice selected", "stage-3/cto_gallery.png",
                     "too small", "small_component", "far_from_organs", "unreadable label",
                     "stage-5/cutmix_samples.png", "organ mean (1-13)", "windows skipped", "wall s",
                     "stage-6/validation_worst_VB.png", "stage-6/validation_best_VA.png"):
        assert expected in text, expected
    # manifests' absolute paths of the old location were re-based onto the work folder
    assert "no overlay" not in text and "could not draw" not in text
    # rebuilding over an existing report works
    assert build_qc_report(work) == page


def test_partial_work_folder_shows_not_run(tmp_path):
    work = make_work(tmp_path / "w", stages=(1, 2))
    stage_dir(work, 3).mkdir()          # started but not finished
    text = check_page(build_qc_report(work))
    status = _status_lines(text)
    assert [s.startswith("done") for s in status] == [True, True, False, False, False, False]
    assert all(s.startswith("not run") for s in status[2:])
    assert "running or interrupted" in status[2] and "running or interrupted" not in status[3]
    assert "stage-2/uncertainty_hist.png" in text


def test_empty_and_missing_work_folder(tmp_path):
    (tmp_path / "w").mkdir()
    text = check_page(build_qc_report(tmp_path / "w", tmp_path / "out"))
    assert _status_lines(text) == ["not run"] * 6
    with pytest.raises(InputError):
        build_qc_report(tmp_path / "absent")


def test_broken_file_is_reported_and_other_stages_still_draw(tmp_path):
    work = make_work(tmp_path / "w", stages=(1, 2))
    (stage_dir(work, 1) / "nnUNet_raw" / "Dataset900_Fake" / "label_types.json").write_text("{not json")
    text = check_page(build_qc_report(work))
    assert "could not draw this section" in text
    assert "stage-2/uncertainty_hist.png" in text


def test_cli_report(tmp_path, capsys):
    work = make_work(tmp_path / "w", stages=(1,))
    assert cli_main(["report", "--work", str(work), "--out", str(tmp_path / "qc")]) == 0
    assert (tmp_path / "qc" / "index.html").is_file()
    assert str(tmp_path / "qc" / "index.html") in capsys.readouterr().out
    assert cli_main(["report", "--work", str(tmp_path / "absent")]) == 2


def test_worst_and_best_cases():
    rows = [{"case": "a", "dsc": "0.9"}, {"case": "a", "dsc": "0.7"}, {"case": "b", "dsc": "0.2"},
            {"case": "c", "dsc": "nan"}, {"case": "b", "dsc": "bad"}]
    means = case_mean_dsc(rows)
    assert means == pytest.approx({"a": 0.8, "b": 0.2})
    assert worst_and_best(means) == [("worst", "b", 0.2), ("best", "a", pytest.approx(0.8))]
    assert worst_and_best({"a": 0.5}) == [("worst", "a", 0.5)]
    assert worst_and_best({}) == []


def test_describe_type_and_overlay_checks_grids(tmp_path):
    assert describe_type([14]) == "tumor only"
    assert describe_type(range(1, 15)) == "all organs + tumor"
    assert describe_type([1, 4]) == "liver, pancreas"
    img = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="reference"):
        validation_overlay(img, np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 9), np.uint8), tmp_path / "o.png")
    assert not (tmp_path / "o.png").exists()


def test_local_path_rebases_onto_the_work_folder(tmp_path):
    target = tmp_path / "stage-2-pseudolabels" / "report"
    target.mkdir(parents=True)
    assert local_path("/elsewhere/run/stage-2-pseudolabels/report", tmp_path) == target
    assert local_path("work-demo/stage-2-pseudolabels/report", tmp_path) == target   # relative --work
    assert local_path(str(tmp_path), tmp_path / "x") == tmp_path                      # outside: as is
    assert local_path("/elsewhere/stage-3-cto/pool", tmp_path) is None
    assert local_path(None, tmp_path) is None


@pytest.mark.parametrize("pasted, red", [(0, True), (9, True), (60, False)])
def test_stage5_shows_cutmix_counts_and_flags_a_low_paste_rate(tmp_path, pasted, red):
    """Issue 25: the demo pasted 0 of 5000 samples and nothing said so."""
    work = make_work(tmp_path / "w")
    man = stage_dir(work, 5) / "manifest.json"
    m = json.loads(man.read_text())
    m["result"]["cutmix"] = {"samples": 200, "eligible": 100, "pasted": pasted, "reached_patch": pasted,
                             "no_fit": 100 - pasted, "paste_rate": pasted / 100}
    man.write_text(json.dumps(m))
    text = build_qc_report(work).read_text()
    assert "context-aware CutMix" in text and "no fitting location" in text
    assert ('<p class="error">context-aware CutMix pasted into' in text) is red
    from flareseg.pipeline.summary import cutmix_line
    assert f"{pasted} of 100 eligible" in cutmix_line(work)
    assert ("WARNING" in cutmix_line(work)) is red
