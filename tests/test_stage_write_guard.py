"""Pipeline stages write through the write guard (issue 24): a stage folder that holds the user's
files, or that is, holds or lies inside one of the run's inputs, is refused before any work (exit 2,
one line, nothing created or removed); a stage's own folder is recorded in its ledger, so a rerun
replaces what the stage wrote; a folder made before ledgers existed is adopted once."""
from __future__ import annotations

from pathlib import Path

import pytest

from bad_input import check_contract, leftovers, md5_tree, run_command
from flareseg.config import ConfigError, load_config
from flareseg.io import write_json
from flareseg.pipeline.__main__ import main as pipeline_main
from flareseg.pipeline.stage import PIPELINE, Stage, stage_dir
from flareseg import write_guard

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
#: what a stage writes first: the resolved config (its sections)
RESOLVED = '{"data": {}, "inference": {}}\n'


def _stage(calls: list) -> Stage:
    """Stage 3 with a run that writes two files into its folder (as the real stages do)."""
    def run(ctx):
        calls.append(ctx.dir)
        write_json({"objects": len(calls)}, ctx.dir / "pool" / "index.json")
        write_json({"n": len(calls)}, ctx.dir / "result.json")
        return {"outputs": [ctx.dir / "pool"]}
    return Stage(3, ("cto",), (), run)


def _cfg(**data):
    sets = [f"data.{k}={v}" for k, v in data.items()]
    return load_config(DEMO, (["data.source=folders"] + sets) if data else [])


def test_a_stage_records_its_files_and_a_rerun_replaces_them(tmp_path):
    calls: list = []
    st, cfg, work = _stage(calls), _cfg(), tmp_path / "work"
    st.execute(cfg, work)
    d = stage_dir(work, 3)
    for rel in ("pool/index.json", "result.json", "config.resolved.json", "manifest.json"):
        assert write_guard.owns(d / rel, PIPELINE), rel
    st.execute(cfg, work, force=True)
    assert len(calls) == 2 and (d / "result.json").read_text().count('"n": 2') == 1
    assert leftovers([work]) == []


@pytest.mark.parametrize("planted", ["notes.txt", "result.json", "pool/index.json"])
def test_a_stage_folder_holding_user_files_is_refused(tmp_path, planted):
    """Before: the stage wrote into the user's folder (and replaced result.json, pool/index.json)."""
    calls: list = []
    work = tmp_path / "work"
    user = stage_dir(work, 3) / planted
    user.parent.mkdir(parents=True)
    user.write_text("the user's own file\n")
    before = md5_tree([work])
    with pytest.raises(ConfigError, match="not a stage folder of flareseg's pipeline"):
        _stage(calls).execute(_cfg(), work)
    assert calls == [] and md5_tree([work]) == before


@pytest.mark.parametrize("where", ["inside", "equal", "holds"])
def test_a_stage_folder_overlapping_a_data_input_is_refused(tmp_path, where):
    """A data folder inside the stage folder, the stage folder itself, or a data folder holding the
    stage folder (--work inside the data): refused naming the key, no byte of the input changed."""
    work = tmp_path / "work"
    d = stage_dir(work, 3)
    data = {"inside": d / "images", "equal": d, "holds": work}[where]
    data.mkdir(parents=True)
    (data / "case_0000.nii.gz").write_bytes(b"the user's scan\n")
    before = md5_tree([data])
    calls: list = []
    with pytest.raises(ConfigError, match="data.labeled_images"):
        _stage(calls).execute(_cfg(labeled_images=data, labels=tmp_path / "labels"), work)
    assert calls == [] and md5_tree([data]) == before and leftovers([tmp_path]) == []


def test_data_beside_the_stage_folders_is_fine(tmp_path):
    work = tmp_path / "work"
    data = work / "data" / "imagesTr"
    data.mkdir(parents=True)
    (data / "case_0000.nii.gz").write_bytes(b"the user's scan\n")
    (work / "README.txt").write_text("the user's notes\n")
    before = md5_tree([work])
    calls: list = []
    _stage(calls).execute(_cfg(labeled_images=data, labels=tmp_path / "labels"), work)
    assert calls and {k: v for k, v in md5_tree([work]).items() if k in before} == before


def test_a_stage_folder_made_before_ledgers_is_adopted(tmp_path):
    work = tmp_path / "work"
    d = stage_dir(work, 3)
    (d / "pool").mkdir(parents=True)
    for rel in ("result.json", "pool/index.json"):
        (d / rel).write_text("{}\n")            # what an earlier flareseg version wrote, no ledger
    (d / "config.resolved.json").write_text(RESOLVED)
    calls: list = []
    _stage(calls).execute(_cfg(), work)
    assert calls and write_guard.owns(d / "result.json", PIPELINE)


def test_pipeline_command_refuses_before_any_work(tmp_path, capsys, caplog):
    """`python -m flareseg.pipeline 1` with the labeled images inside stage-1's folder: exit 2, one
    line naming the key, no log folder or any other file created."""
    work = tmp_path / "work"
    images, labels = stage_dir(work, 1) / "images", tmp_path / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    (images / "c1_0000.nii.gz").write_bytes(b"scan\n")
    (labels / "c1.nii.gz").write_bytes(b"label\n")
    before = md5_tree([tmp_path])
    argv = ["1", "--config", DEMO, "--work", work, "--set", "data.source=folders",
            "--set", f"data.labeled_images={images}", "--set", f"data.labels={labels}"]
    out = run_command(pipeline_main, argv, capsys, caplog)
    check_contract(out, rc=2, names=["data.labeled_images", str(images)], reason="config error",
                   inputs_before=before, inputs=[tmp_path], outputs=[work])
    assert md5_tree([tmp_path]) == before and not (stage_dir(work, 1) / "logs").exists()


def test_a_member_model_of_stage1_does_not_block_stage1(tmp_path):
    """pseudolabel.member_models may name one of stage-1's own models (another checkpoint): an input
    of stage 2, not of stage 1, so a rerun of stage 1 is not refused; inside stage-2's folder it is."""
    from flareseg.pipeline.stage import check_stage_folder
    work = tmp_path / "work"
    member = stage_dir(work, 1) / "nnUNet_results" / "Dataset823" / "fine"
    cfg = load_config(DEMO, [f"pseudolabel.member_models=[{member}@checkpoint_best.pth]"])
    check_stage_folder(cfg, work, 1)
    inside2 = stage_dir(work, 2) / "members" / "m"
    with pytest.raises(ConfigError, match="pseudolabel.member_models"):
        check_stage_folder(load_config(DEMO, [f"pseudolabel.member_models=[{inside2}]"]), work, 2)


def test_a_pre_ledger_stage_folder_holding_another_commands_ledger_is_adopted(tmp_path):
    """stage-4's folder of an earlier version: clean's ledger (its cleaned labels) but no entry of the
    pipeline's own files."""
    work = tmp_path / "work"
    d = stage_dir(work, 3)
    d.mkdir(parents=True)
    (d / "config.resolved.json").write_text(RESOLVED)
    (d / "result.json").write_text("{}\n")
    (d / "cleaned.csv").write_text("case\n")
    write_guard.adopt([d / "cleaned.csv"], "clean")         # another command's ledger in the folder
    calls: list = []
    _stage(calls).execute(_cfg(), work)
    assert calls and write_guard.owns(d / "result.json", PIPELINE) and write_guard.owns(d / "cleaned.csv", "clean")


def test_a_copied_work_folder_reruns(tmp_path):
    """A copy (new inodes: the ledger no longer matches) is still recognised by its resolved config."""
    import shutil
    calls: list = []
    st, cfg = _stage(calls), _cfg()
    st.execute(cfg, tmp_path / "work")
    shutil.copytree(tmp_path / "work", tmp_path / "copy")
    st.execute(cfg, tmp_path / "copy", force=True)
    assert len(calls) == 2 and write_guard.owns(stage_dir(tmp_path / "copy", 3) / "result.json", PIPELINE)


def test_a_refusal_inside_a_stage_is_one_stage_error(tmp_path):
    """A command a stage runs (clean, import, predict) refusing an output ends the stage with a
    StageError (one line, exit 3), not a traceback."""
    from flareseg.pipeline.stage import StageError

    def run(ctx):
        raise write_guard.UnsafeOutput(f"{ctx.dir / 'x'} exists and was not written by flareseg clean")
    with pytest.raises(StageError, match="^stage-3: .*x exists"):
        Stage(3, ("cto",), (), run).execute(_cfg(), tmp_path / "work")
