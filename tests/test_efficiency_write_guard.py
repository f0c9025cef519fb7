"""`flareseg efficiency` writes through the write guard (issue 24): its reports, each case's log and
each case's `{output}` are planned and checked before the first case -- an output that is an input,
or a file in --out the harness did not write, is refused (exit 2, one line, no case run) unless
--overwrite; a rerun replaces its own files; no temp is left."""
from __future__ import annotations

import json

import pytest

from bad_input import leftovers, md5_tree, run_command, tiny_ct
from flareseg.cli import main
from flareseg import write_guard

#: a prediction command that writes its output (and would clobber whatever stands there)
CMD = ["--", "sh", "-c", "echo predicted > {output}"]


def _run(inputs, out, capsys, caplog, *extra):
    return run_command(main, ["efficiency", "--inputs", str(inputs), "--out", str(out), *extra, *CMD],
                       capsys, caplog)


def _errors(res) -> list[str]:
    return [r.getMessage() for r in res.records if r.levelno >= 40]


@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    tiny_ct(d / "a_0000.nii.gz")
    return d


def test_rerun_replaces_its_own_files(inputs, tmp_path, capsys, caplog):
    out = tmp_path / "eff"
    assert _run(inputs, out, capsys, caplog).rc == 0
    for rel in ("efficiency.csv", "efficiency.json", "logs/a.log", "outputs/a.nii.gz"):
        assert write_guard.owns(out / rel, "efficiency"), rel
    assert _run(inputs, out, capsys, caplog).rc == 0
    assert leftovers([tmp_path]) == []


@pytest.mark.parametrize("planted", ["efficiency.csv", "logs/a.log", "outputs/a.nii.gz"])
def test_a_foreign_file_in_out_is_refused_before_any_case(inputs, tmp_path, capsys, caplog, planted):
    """Before: the reports, the log and the command's output replaced the user's file."""
    out = tmp_path / "eff"
    user = out / planted
    user.parent.mkdir(parents=True)
    user.write_text("the user's own file\n")
    before = md5_tree([out, inputs])
    res = _run(inputs, out, capsys, caplog)
    assert res.rc == 2 and len(_errors(res)) == 1 and str(user) in _errors(res)[0], res.lines
    assert "Traceback" not in res.stderr and md5_tree([out, inputs]) == before
    assert not (out / "efficiency.json").exists()
    res = _run(inputs, out, capsys, caplog, "--overwrite")   # the user says so: replaced
    assert res.rc == 0 and md5_tree([inputs]) == {k: v for k, v in before.items() if k.startswith(str(inputs))}


def test_an_output_that_is_an_input_is_refused(tmp_path, capsys, caplog):
    """--inputs OUT/outputs: case `a.nii.gz`'s {output} is the input itself (the command would
    have overwritten the scan)."""
    out = tmp_path / "eff"
    src = out / "outputs"
    src.mkdir(parents=True)
    tiny_ct(src / "a.nii.gz")
    before = md5_tree([src])
    res = _run(src, out, capsys, caplog, "--overwrite")
    assert res.rc == 2 and len(_errors(res)) == 1 and str(src / "a.nii.gz") in _errors(res)[0], res.lines
    assert md5_tree([src]) == before and leftovers([tmp_path]) == []


def test_a_folder_written_before_ledgers_is_adopted(inputs, tmp_path, capsys, caplog):
    out = tmp_path / "eff"
    assert _run(inputs, out, capsys, caplog).rc == 0
    (out / write_guard.LEDGER).unlink()                 # as an earlier flareseg left it
    assert json.loads((out / "efficiency.json").read_text())["cases"][0]["log"] == str(out / "logs" / "a.log")
    assert _run(inputs, out, capsys, caplog).rc == 0
