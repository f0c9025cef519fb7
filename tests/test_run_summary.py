"""The closing table of a pipeline run (`make demo`): DSC/NSD per class, classes the budget did
not learn marked as such (issue 19)."""
from __future__ import annotations

import json

from flareseg.labels import CLASS_NAMES, FOREGROUND
from flareseg.work_layout import stage_dir
from flareseg.pipeline.summary import class_table, run_summary


def _per_class(dsc: dict[int, float | None]) -> dict:
    return {str(c): {"name": CLASS_NAMES[c], "dsc": d, "nsd": None if d is None else min(1.0, d + 0.1)}
            for c, d in dsc.items()}


def test_class_table_lists_every_class_and_marks_the_unlearned():
    dsc = {c: 0.0 for c in FOREGROUND} | {1: 0.9123, 3: 0.05, 13: 0.049}
    dsc[9] = None
    lines = class_table(_per_class(dsc))
    assert lines[0].split() == ["class", "DSC", "NSD"]
    body = {ln.split()[0]: ln for ln in lines[1:15]}
    assert list(body) == [CLASS_NAMES[c] for c in FOREGROUND]            # one row per class, in order
    assert body["liver"].split() == ["liver", "0.912", "1.000"]
    assert body["spleen"].split()[1:] == ["0.050", "0.150"]                # at the threshold: learned
    assert body["left_kidney"].endswith("not learned at this budget")
    assert body["tumor"].endswith("not learned at this budget")
    assert body["gallbladder"].endswith("no score (absent from the validation labels)")
    assert lines[-1] == ("  11 of 14 classes below DSC 0.05: not learned at this training budget "
                         "(the CPU demo trains for minutes; a full run learns them)")
    assert len({len(ln.split("  not")[0].split("  no score")[0]) for ln in lines[1:15]}) == 1   # aligned


def test_all_learned_has_no_note():
    lines = class_table(_per_class({1: 0.9, 14: 0.6}))
    assert len(lines) == 3 and "not learned" not in "\n".join(lines)


def test_run_summary_prints_the_per_class_table(tmp_path):
    s6 = stage_dir(tmp_path, 6)
    s6.mkdir(parents=True)
    ev = {"per_class": _per_class({1: 0.4, 14: 0.0}), "organ_mean": {"dsc": 0.4, "nsd": 0.5},
          "tumor": {"dsc": 0.0, "nsd": 0.0}}
    (s6 / "manifest.json").write_text(json.dumps({"result": {"evaluation": ev, "windows_skipped": 1,
                                                             "windows_total": 4}}))
    (s6 / "ship_report.json").write_text(json.dumps({"prediction": {"cases": {"a": {"seconds": 2.0}}}}))
    text = run_summary(tmp_path)
    assert "organ mean DSC / NSD        0.400 /  0.500" in text
    tail = text.split("per class (validation)\n")[1].splitlines()
    assert tail[1].split() == ["liver", "0.400", "0.500"]
    assert tail[2].split()[:3] == ["tumor", "0.000", "0.100"] and tail[2].endswith("not learned at this budget")


def test_external_scan_lines_list_its_classes_or_why_it_was_skipped():
    from flareseg.pipeline.summary import external_lines
    assert external_lines(None) == []
    skipped = external_lines({"image": "../x/ct.nii.gz", "labels": "l.nii.gz", "skipped": "not found: ../x/ct.nii.gz"})
    assert skipped == ["external scan ct.nii.gz: skipped (not found: ../x/ct.nii.gz)"]
    ext = {"image": "/d/ct.nii.gz", "labels": "/d/seg.nii.gz", "per_class": {
        "3": {"name": "spleen", "ref_voxels": 900, "pred_voxels": 0, "dsc": 0.0},
        "1": {"name": "liver", "ref_voxels": 3000, "pred_voxels": 2900, "dsc": 0.8123},
        "10": {"name": "esophagus", "ref_voxels": 0, "pred_voxels": 0, "dsc": None},
        "9": {"name": "gallbladder", "ref_voxels": 0, "pred_voxels": 12, "dsc": 0.0}}}
    lines = external_lines(ext)
    assert lines[0] == "per class (external scan ct.nii.gz, labels seg.nii.gz)"
    body = lines[2:]
    assert [ln.split()[0] for ln in body] == ["liver", "spleen", "gallbladder"]   # class order, scored only
    assert "0.812" in body[0] and "3000" in body[0]
    assert body[2].endswith("(absent from its labels)")
