"""`make clean-work` (`python -m flareseg.pipeline clean`) removes a pipeline work folder and
nothing that is not one: `WORK=~` or a dataset folder is refused, nothing deleted."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from flareseg import write_guard
from flareseg.io import write_json, write_text
from flareseg.pipeline.__main__ import main
from flareseg.pipeline.remove_work import removal_plan, remove_work


def _work(root: Path) -> Path:
    """A work folder as the pipeline leaves it: two stage folders written under the stages' ledger
    (plus a file nnU-Net wrote that no ledger records, and a log) and the QC report's folder."""
    work = root / "work"
    for name in ("stage-1-fine", "stage-2-pseudolabels"):
        d = work / name
        with write_guard.recording(d, "pipeline"):
            write_json({"data": {}, "inference": {}}, d / "config.resolved.json")
            write_json({"stage": name}, d / "manifest.json")
        (d / "nnUNet_results" / "fold_0").mkdir(parents=True)
        (d / "nnUNet_results" / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
        (d / "logs").mkdir()
        (d / "logs" / "stage.log").write_text("log")
    with write_guard.recording(work / "qc", "report"):
        write_text("<html></html>", work / "qc" / "index.html")
    return work


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


def test_a_pipeline_work_folder_is_removed_whole(tmp_path, capsys):
    work = _work(tmp_path)
    assert [p.name for p in removal_plan(work)] == ["qc", "stage-1-fine", "stage-2-pseudolabels"]
    # --work given: no config is read (the default configs/demo.yaml need not exist where it runs)
    assert main(["clean", "--work", str(work), "--config", str(tmp_path / "missing.yaml")]) == 0
    assert not work.exists() and f"removed {work}" in capsys.readouterr().out
    assert main(["clean", "--work", str(work)]) == 0            # again: nothing to remove
    assert "nothing to remove" in capsys.readouterr().out


def test_a_stage_folder_made_before_ledgers_counts_as_the_pipelines(tmp_path):
    """A copied stage folder (new inodes: the ledger no longer matches) is recognised by the
    config.resolved.json every stage writes first."""
    work = tmp_path / "work"
    (work / "stage-5-coarse").mkdir(parents=True)
    (work / "stage-5-coarse" / "config.resolved.json").write_text('{"data": {}, "inference": {}}')
    remove_work(work)
    assert not work.exists()


@pytest.mark.parametrize("foreign", ["thesis.txt", "data/case_0000.nii.gz", "stage-3-cto/notes.txt", "qc/mine.html",
                                     "link"])
def test_anything_the_pipeline_did_not_make_refuses_the_removal(foreign, tmp_path, capsys):
    """A file or folder of someone's beside the stage folders, a stage-named folder that is not the
    pipeline's, a qc/ that flareseg report did not write, a symlink (to a folder outside): exit 2,
    one line naming it, nothing removed (outside the work folder neither)."""
    work = _work(tmp_path)
    if foreign == "qc/mine.html":
        import shutil
        shutil.rmtree(work / "qc")
    if foreign == "link":
        (tmp_path / "home").mkdir()
        (tmp_path / "home" / "photo.jpg").write_bytes(b"jpg")
        os.symlink(tmp_path / "home", work / "link")
    else:
        (work / foreign).parent.mkdir(parents=True, exist_ok=True)
        (work / foreign).write_text("mine")
    before = _tree(tmp_path)
    assert main(["clean", "--work", str(work)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert foreign.split("/")[0] in err and "refusing to remove" in err, err
    assert _tree(tmp_path) == before


def test_a_file_or_a_symlinked_work_folder_is_not_removed(tmp_path, capsys):
    f = tmp_path / "work.txt"
    f.write_text("mine")
    real = _work(tmp_path)
    link = tmp_path / "worklink"
    os.symlink(real, link)
    before = _tree(tmp_path)
    for w in (f, link):
        assert main(["clean", "--work", str(w)]) == 2
        assert "not a work folder" in capsys.readouterr().err
    assert _tree(tmp_path) == before
