"""Bad-input matrix, `flareseg evaluate / clean / phantoms / report / efficiency`: one row per
distinct bad input, each checked against the contract of tests/bad_input.py (exit code, one line
naming the file/option/key and the reason, no traceback, the rest of the batch done, no temp
files, inputs byte-identical)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bad_input import check_contract, md5_tree, run_command
from flareseg.cli import main as cli_main
from flareseg.io import Geometry, write_array

GEO = Geometry((12, 10, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _label(extra: int | None = None) -> np.ndarray:
    """A (6, 10, 12) label map: a liver block and a tumor inside; ``extra`` stamps a bad value."""
    a = np.zeros(GEO.shape_zyx, np.uint8)
    a[1:5, 2:8, 2:9] = 1
    a[2:4, 4:6, 4:6] = 14
    if extra is not None:
        a[0, 0, 0] = extra
    return a


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """pred/ and gt/ with a good case c1 and a case c2; extra folders for the rows."""
    d = {k: tmp_path / k for k in ("pred", "gt", "empty_pred", "empty_gt", "labels", "work")}
    for p in d.values():
        p.mkdir()
    for name in ("c1", "c2"):
        write_array(_label(), GEO, d["pred"] / f"{name}.nii.gz")
        write_array(_label(), GEO, d["gt"] / f"{name}.nii.gz")
        write_array(_label(), GEO, d["labels"] / f"{name}.nii.gz")
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    d["file"] = tmp_path / "file.txt"
    d["tmp"] = tmp_path
    return d


def _per_case(out: Path) -> set[str]:
    with open(out / "per_case.csv") as f:
        return {r["case"] for r in csv.DictReader(f)}


# ----------------------------------------------------------------------------- evaluate

# (id, setup: which file gets which bad value, extra argv, exit, names, reason)
EVALUATE_ROWS = [
    ("pred-label-99", ("pred", 99), [], 1, ["{pred}/c2.nii.gz", "99"], "outside the FLARE23 classes 0..14"),
    ("gt-label-15", ("gt", 15), [], 1, ["{gt}/c2.nii.gz", "15"], "outside the FLARE23 classes 0..14"),
    ("classes-99", None, ["--classes", "1", "99"], 2, ["--classes", "99", "14 tumor"], "not a FLARE23 class"),
    ("classes-0", None, ["--classes", "0"], 2, ["--classes", "0", "1 liver"], "not a FLARE23 class"),
    ("both-empty", None, ["--pred", "{empty_pred}", "--gt", "{empty_gt}"], 2, ["{empty_gt}"],
     "nothing to evaluate"),
    ("pred-missing", None, ["--pred", "{tmp}/nope"], 2, ["{tmp}/nope", "--pred"], "does not exist"),
    ("gt-missing", None, ["--gt", "{tmp}/nope"], 2, ["{tmp}/nope", "--gt"], "does not exist"),
    ("out-is-a-file", None, ["--out", "{file}"], 2, ["{file}", "--out"], "not a folder"),
    ("out-is-gt", None, ["--out", "{gt}"], 2, ["{gt}", "--gt"], "among the inputs"),
    ("nsd-min-dsc-2", None, ["--set", "evaluation.nsd_min_dsc=2"], 2,
     ["evaluation.nsd_min_dsc", "2"], "out of range"),
]


def _fmt(s: str, d: dict[str, Path]) -> str:
    return s.format(**{k: str(v) for k, v in d.items()})


@pytest.mark.parametrize("row", EVALUATE_ROWS, ids=[r[0] for r in EVALUATE_ROWS])
def test_evaluate_bad_input(row, folders, capsys, caplog):
    _, bad, extra, rc, names, reason = row
    if bad:
        write_array(_label(bad[1]), GEO, folders[bad[0]] / "c2.nii.gz")
    out_dir = folders["tmp"] / "report"
    argv = ["evaluate", "--pred", folders["pred"], "--gt", folders["gt"], "--out", out_dir]
    argv += [_fmt(a, folders) for a in extra]
    inputs = [folders["pred"], folders["gt"], folders["file"]]
    before = md5_tree(inputs)
    out = run_command(cli_main, argv, capsys, caplog)
    check_contract(out, rc=rc, names=[_fmt(n, folders) for n in names], reason=reason,
                   inputs_before=before, inputs=inputs, outputs=[out_dir],
                   done=[out_dir / "summary.json"] if rc == 1 else [])
    if rc == 1:
        assert _per_case(out_dir) == {"c1"}, "the good case was not scored"
    else:
        assert not out_dir.exists(), "reports written although the input was bad"


# ----------------------------------------------------------------------------- clean

CLEAN_ROWS = [
    ("min-voxels-negative", ["--set", "cleaning.min_voxels=-5"], 2,
     ["cleaning.min_voxels", "-5"], "out of range (expected >= 0)"),
    ("organ-distance-negative", ["--set", "cleaning.max_organ_distance_mm=-20"], 2,
     ["cleaning.max_organ_distance_mm", "-20"], "out of range (expected >= 0)"),
    ("abdomen-margin-nan", ["--set", "cleaning.abdomen_margin_mm=.nan"], 2,
     ["cleaning.abdomen_margin_mm", "nan"], "out of range"),
    ("labels-missing", ["--labels", "{tmp}/nope"], 2, ["{tmp}/nope", "--labels"], "does not exist"),
    ("labels-empty", ["--labels", "{empty_gt}"], 2, ["{empty_gt}", "--labels"], "nothing to clean"),
    ("images-missing", ["--images", "{tmp}/nope"], 2, ["{tmp}/nope", "--images"], "does not exist"),
    ("out-is-labels", ["--out", "{labels}"], 2, ["{labels}", "--labels"], "among the inputs"),
    ("out-is-a-file", ["--out", "{file}"], 2, ["{file}", "--out"], "not a folder"),
    ("label-value-99", "bad-case", 1, ["{labels}/c2.nii.gz", "99"], "outside the FLARE23 classes"),
]


@pytest.mark.parametrize("row", CLEAN_ROWS, ids=[r[0] for r in CLEAN_ROWS])
def test_clean_bad_input(row, folders, capsys, caplog):
    _, extra, rc, names, reason = row
    if extra == "bad-case":
        write_array(_label(99), GEO, folders["labels"] / "c2.nii.gz")
        extra = []
    out_dir = folders["tmp"] / "cleaned"
    argv = ["clean", "--labels", folders["labels"], "--out", out_dir] + [_fmt(a, folders) for a in extra]
    inputs = [folders["labels"], folders["file"]]
    before = md5_tree(inputs)
    out = run_command(cli_main, argv, capsys, caplog)
    check_contract(out, rc=rc, names=[_fmt(n, folders) for n in names], reason=reason,
                   inputs_before=before, inputs=inputs, outputs=[out_dir],
                   done=[out_dir / "labels" / "c1.nii.gz", out_dir / "cleaning_summary.csv"] if rc == 1 else [])
    if rc == 2:
        assert not out_dir.exists(), "outputs written although the input was bad"


# ----------------------------------------------------------------------------- phantoms

PHANTOM_ROWS = [
    ("labeled-huge", ["--labeled", "1000000000"], ["--labeled", "1000000000", "10000"], "out of range"),
    ("unlabeled-negative", ["--unlabeled", "-1"], ["--unlabeled", "-1"], "out of range"),
    ("tumor-only-above-max", ["--tumor-only", "10001"], ["--tumor-only", "10001"], "out of range"),
    ("workers-zero", ["--workers", "0"], ["--workers", "0"], "out of range"),
    ("workers-negative", ["--workers", "-3"], ["--workers", "-3"], "out of range"),
    ("seed-negative", ["--seed", "-1"], ["--seed", "-1"], "out of range"),
    ("size-reversed", ["--size-xy", "200", "100"], ["--size-xy", "[200, 100]"], "lo <= hi"),
    ("size-too-small", ["--size-xy", "4", "8"], ["--size-xy", "[4, 8]"], "[16, 2048]"),
    ("slice-spacing-zero", ["--slice-spacing", "0", "2"], ["--slice-spacing"], "out of range"),
    ("extent-nan", ["--extent-z", "100", "nan"], ["--extent-z", "nan"], "out of range"),
    ("out-is-a-file", ["--out", "{file}"], ["{file}", "--out"], "not a folder"),
    ("config-out-of-range", ["--config", "{tmp}/ph.yaml"], ["{tmp}/ph.yaml", "data.phantoms.validation"],
     "out of range"),
]


@pytest.mark.parametrize("row", PHANTOM_ROWS, ids=[r[0] for r in PHANTOM_ROWS])
def test_phantoms_bad_input(row, folders, capsys, caplog):
    _, extra, names, reason = row
    (folders["tmp"] / "ph.yaml").write_text("data:\n  phantoms:\n    validation: 20000\n")
    out_dir = folders["tmp"] / "phantoms"
    argv = ["phantoms", "--out", out_dir, "--labeled", "1", "--tumor-only", "0", "--unlabeled", "0",
            "--validation", "0"] + [_fmt(a, folders) for a in extra]
    inputs = [folders["file"], folders["tmp"] / "ph.yaml"]
    before = md5_tree(inputs)
    out = run_command(cli_main, argv, capsys, caplog)
    check_contract(out, rc=2, names=[_fmt(n, folders) for n in names], reason=reason,
                   inputs_before=before, inputs=inputs, outputs=[out_dir])
    assert not out_dir.exists(), "phantoms written although an option was bad"


# ----------------------------------------------------------------------------- report, efficiency

OTHER_ROWS = [
    ("report-work-missing", ["report", "--work", "{tmp}/nope"], ["{tmp}/nope"], "not a work folder"),
    ("report-work-is-a-file", ["report", "--work", "{file}"], ["{file}"], "not a work folder"),
    ("report-out-is-a-file", ["report", "--work", "{work}", "--out", "{file}"], ["{file}", "--out"],
     "not a folder"),
    ("efficiency-inputs-missing", ["efficiency", "--inputs", "{tmp}/nope", "--out", "{tmp}/eff", "--", "true"],
     ["{tmp}/nope"], "does not exist"),
    ("efficiency-inputs-empty", ["efficiency", "--inputs", "{empty_gt}", "--out", "{tmp}/eff", "--", "true"],
     ["{empty_gt}"], "no input images"),
    ("efficiency-no-command", ["efficiency", "--inputs", "{gt}", "--out", "{tmp}/eff"], ["--"], "no command"),
    ("efficiency-interval-zero", ["efficiency", "--inputs", "{gt}", "--out", "{tmp}/eff", "--interval", "0",
                                  "--", "true"], ["--interval", "0"], "out of range"),
    ("efficiency-timeout-negative", ["efficiency", "--inputs", "{gt}", "--out", "{tmp}/eff", "--timeout", "-1",
                                     "--", "true"], ["--timeout", "-1"], "out of range"),
    ("efficiency-gpu-index-negative", ["efficiency", "--inputs", "{gt}", "--out", "{tmp}/eff",
                                       "--gpu-index", "-1", "--", "true"], ["--gpu-index", "-1"], "out of range"),
    ("efficiency-out-is-a-file", ["efficiency", "--inputs", "{gt}", "--out", "{file}", "--", "true"],
     ["{file}", "--out"], "not a folder"),
]


@pytest.mark.parametrize("row", OTHER_ROWS, ids=[r[0] for r in OTHER_ROWS])
def test_report_and_efficiency_bad_input(row, folders, capsys, caplog):
    _, argv, names, reason = row
    inputs = [folders["gt"], folders["file"], folders["work"]]
    before = md5_tree(inputs)
    out = run_command(cli_main, [_fmt(a, folders) for a in argv], capsys, caplog)
    check_contract(out, rc=2, names=[_fmt(n, folders) for n in names], reason=reason,
                   inputs_before=before, inputs=inputs, outputs=[folders["tmp"]])
    assert not (folders["tmp"] / "eff").exists()
    assert not (folders["work"] / "qc").exists()
