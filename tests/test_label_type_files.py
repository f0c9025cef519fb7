"""Label types a FLARE23 user steers at import: the authors' JSON type file, per-case overrides,
and the table of types shown right after import (issue 27 item 8)."""
from __future__ import annotations

import json

import pytest

from flareseg.cli import main
from flareseg.data.intake import ImportConfigError, import_dataset
from flareseg.data.label_types import rare_types, type_table
from flareseg.labels import FOREGROUND, describe_type
from tests.tiny import TYPES, write_tiny_raw


@pytest.fixture
def raw(tmp_path):
    return write_tiny_raw(tmp_path / "raw", n_unlabeled=0)


def test_authors_json_type_file_gives_the_manifest_types(raw, tmp_path):
    data = {f"{cid}_0000.nii.gz" if cid == "t00" else cid: "_".join(map(str, t)) for cid, t in TYPES.items()}
    data["FLARE23_9999"] = "1_2_3"                          # a case this import does not hold: skipped
    data["t04"] = "1_2_3_4_5_6_7_8_9_10_11_12_13"         # all organs annotated, only liver present
    (raw / "case_to_partial_type.json").write_text(json.dumps(data))
    rep = import_dataset(tmp_path / "ds", raw / "imagesTr", raw / "labelsTr",
                         manifest=raw / "case_to_partial_type.json")
    assert rep.label_type_source == "manifest" and not rep.bad
    got = rep.label_types()
    assert got["t00"] == list(TYPES["t00"]) and got["t06"] == [14]
    assert got["t04"] == list(range(1, 14))


def test_overrides_list_only_some_cases_and_the_rest_come_from_labels(raw, tmp_path):
    (raw / "types.csv").write_text("case_id,annotated\nt04,1 2 3 4 5 6 7 8 9 10 11 12 13 14\n")
    rep = import_dataset(tmp_path / "ds", raw / "imagesTr", raw / "labelsTr", types_override=raw / "types.csv")
    got = rep.label_types()
    assert got["t04"] == list(FOREGROUND)                 # overridden
    assert got["t05"] == [1] and got["t00"] == [1, 3, 14]  # classes present in the label
    assert rep.type_from["t04"] == "override" and rep.type_from["t05"] == "labels"
    report = json.loads((tmp_path / "ds" / "import_report.json").read_text())
    assert report["label_type_source"] == "labels+override" and "override file" in report["label_type_note"]
    assert report["label_type_from"]["t04"] == "override"
    assert report["rare_label_types"]["_".join(map(str, FOREGROUND))] == ["t04"]


def test_override_wins_over_the_manifest_and_a_bad_entry_is_refused(raw, tmp_path):
    (raw / "types.json").write_text(json.dumps({"t05": [1, 3]}))
    rep = import_dataset(tmp_path / "ds", raw / "imagesTr", raw / "labelsTr", manifest=raw / "manifest.csv",
                         types_override=raw / "types.json")
    assert rep.label_types()["t05"] == [1, 3] and rep.label_types()["t04"] == [1]
    (raw / "bad.json").write_text(json.dumps({"t05": "1_99"}))
    with pytest.raises(ImportConfigError, match="bad.json: case t05: class 99"):
        import_dataset(tmp_path / "ds2", raw / "imagesTr", raw / "labelsTr", types_override=raw / "bad.json")


def test_import_prints_the_types_with_rare_ones_named(raw, tmp_path, capsys):
    (raw / "types.csv").write_text("case_id,annotated\nt04,1 3 4 5 6 7 8 9 10 11 12 13 14\n")
    assert main(["import", "-i", str(raw / "imagesTr"), "--labels", str(raw / "labelsTr"),
                 "--types", str(raw / "types.csv"), "-o", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "label types of 8 labeled case(s)" in out and "labels: 7" in out and "override: 1" in out
    line = next(ln for ln in out.splitlines() if "all organs but right_kidney + tumor" in ln)
    assert "rare: t04" in line
    assert any(ln.split()[0] == "4" and "[1_3_14]" in ln for ln in out.splitlines())   # t00..t03


def test_describe_and_rare():
    assert describe_type(FOREGROUND) == "all organs + tumor"
    assert describe_type([c for c in FOREGROUND if c != 2]) == "all organs but right_kidney + tumor"
    assert describe_type([1, 3]) == "liver, spleen" and describe_type([14]) == "tumor only"
    types = {f"c{i}": (1, 14) for i in range(300)} | {"x": (1,), "y": (1,), "z": (3,)}
    assert rare_types(types) == {"1": ["x", "y"], "3": ["z"]}           # at most 3 cases (1 % of 303)
    lines = type_table(types)
    assert lines[1].split()[0] == "300" and "rare" not in lines[1]


def test_qc_report_shows_the_types_right_after_import(raw, tmp_path):
    """`flareseg report` on a work folder whose stage-1 has imported but not trained yet."""
    from flareseg.work_layout import stage_dir
    from flareseg.report.qc import build_qc_report
    work = tmp_path / "work"
    (raw / "types.csv").write_text("case_id,annotated\nt04,1 3 4 5 6 7 8 9 10 11 12 13 14\n")
    import_dataset(stage_dir(work, 1) / "nnUNet_raw" / "Dataset823_T", raw / "imagesTr", raw / "labelsTr",
                   types_override=raw / "types.csv")
    html = build_qc_report(work).read_text()
    assert "label types (import finished; training not yet)" in html
    assert "all organs but right_kidney + tumor" in html and "t04" in html and "override: 1" in html


def test_pipeline_key_data_label_types_reaches_the_import(tmp_path):
    from pathlib import Path

    from flareseg.config import load_config
    from flareseg.pipeline.__main__ import missing_data_folders
    from flareseg.pipeline.stage1_fine import data_sources
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    cfg = load_config(tiny, [f"data.label_types={tmp_path}/types.json"])
    assert data_sources(cfg, tmp_path / "s1")["label_types"] == tmp_path / "types.json"
    cfg = load_config(tiny, ["data.source=folders", f"data.labeled_images={tmp_path}", f"data.labels={tmp_path}",
                             f"data.label_types={tmp_path}/absent.csv"])
    assert missing_data_folders(cfg) == [f"{tmp_path}/absent.csv: file does not exist (data.label_types)"]
