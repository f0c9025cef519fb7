"""Stage-1 under ``torchrun`` with 2 CPU processes (gloo): the model folder loads in stock
nnU-Net, both ranks hold identical weights after every epoch, each step has one label type on all
ranks and different cases per rank; a SIGKILLed run resumes and finishes (issue 15)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flareseg.config import load_config
from flareseg.pipeline.__main__ import launch_error

ROOT = Path(__file__).resolve().parents[1]
TINIER = ["data.phantoms.labeled=4", "data.phantoms.tumor_only=4", "data.phantoms.unlabeled=1",
          "data.phantoms.validation=0", "train_fine.iterations_per_epoch=3", "train_fine.gpus=2"]


def _cmd(work: Path, epochs: int) -> list[str]:
    sets = sum((["--set", s] for s in TINIER + [f"train_fine.epochs={epochs}"]), [])
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "flareseg.pipeline", "1", "--config", str(ROOT / "configs" / "tiny.yaml"),
            "--work", str(work), *sets]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _fold(work: Path) -> Path:
    return next((work / "stage-1-fine" / "nnUNet_results").rglob("fold_0"))


def _rank_logs(work: Path) -> list[list[dict]]:
    logs = work / "stage-1-fine" / "logs"
    return [[json.loads(line) for line in (logs / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]


def _check_ranks(r0: list[dict], r1: list[dict]) -> None:
    # a resumed run repeats the epochs after its checkpoint: the last record of each epoch counts
    r0, r1 = list({e["epoch"]: e for e in r0}.values()), list({e["epoch"]: e for e in r1}.values())
    assert [e["epoch"] for e in r0] == [e["epoch"] for e in r1]
    for a, b in zip(r0, r1):
        assert a["weights"] == b["weights"], f"epoch {a['epoch']}: ranks' weights differ"
        assert [s["type"] for s in a["steps"]] == [s["type"] for s in b["steps"]]
        assert all(len(s["cases"]) == 1 for s in a["steps"] + b["steps"])   # global batch 2 = 2 x 1
    assert any(a["weights"] != b["weights"] for a, b in zip(r0, r0[1:]))   # it does train
    cases0 = [c for e in r0 for s in e["steps"] for c in s["cases"]]
    cases1 = [c for e in r1 for s in e["steps"] for c in s["cases"]]
    assert cases0 != cases1                                                # different cases per rank


@pytest.mark.slow
def test_two_processes_train_a_stock_loadable_model_with_identical_ranks(tmp_path):
    work = tmp_path / "w"
    p = subprocess.run(_cmd(work, 3), env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = _rank_logs(work)
    assert [e["epoch"] for e in r0] == [0, 1, 2]
    _check_ranks(r0, r1)
    man = json.loads((work / "stage-1-fine" / "manifest.json").read_text())
    assert man["result"]["training"]["epochs"] == 3
    # rank 1 wrote nothing of its own besides its logs: step records are rank 0's, once
    assert sorted(x.name for x in (work / "stage-1-fine" / "logs").iterdir()) == [
        "rank0.jsonl", "rank1.jsonl", "stage-rank1.log", "stage.log"]   # + each rank's output (flareseg.console)

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from flareseg.nnunet.env import trainer_dir
    os.environ.setdefault("nnUNet_extTrainer", trainer_dir())
    pred = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(_fold(work).parent), use_folds=(0,))
    ck = torch.load(_fold(work) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert not any(k.startswith("module.") for k in ck["network_weights"])   # unwrapped, as stock saves


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie no init reaped does not count: it can no longer write)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_killed_two_process_training_resumes_and_finishes(tmp_path):
    work = tmp_path / "w"
    proc = subprocess.Popen(_cmd(work, 6), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 500
        latest = None
        while time.time() < deadline and proc.poll() is None:
            found = list((work / "stage-1-fine").rglob("checkpoint_latest.pth")) if work.exists() else []
            if found:
                latest = found[0]
                break
            time.sleep(0.2)
        assert latest is not None, "no checkpoint before the run ended"
        ranks = _children(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # torchrun puts its ranks in sessions of their own: they must die with it, not keep training
    # (and rotating checkpoints) under the rerun
    assert len(ranks) == 2
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(p) for p in ranks):
        time.sleep(0.1)
    assert not any(_alive(p) for p in ranks), "ranks outlived their killed launcher"
    assert not (latest.parent / "checkpoint_final.pth").exists()

    p = subprocess.run(_cmd(work, 6), env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (latest.parent / "checkpoint_final.pth").is_file()
    r0, r1 = _rank_logs(work)
    assert r0[-1]["epoch"] == 5
    assert [e["epoch"] for e in r0].count(0) == 1     # resumed from the checkpoint, not from scratch
    _check_ranks(r0, r1)


def test_launch_must_match_gpus_and_nodes(monkeypatch):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train_fine.gpus=2"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    msg = launch_error(cfg, "1")
    assert "train_fine.gpus" in msg and "torchrun --nproc-per-node 2" in msg
    assert launch_error(cfg, "2") is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch_error(cfg, "1") is None
    assert "one process" in launch_error(cfg, "3")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train_fine.nodes=2"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "train_fine.rendezvous" in launch_error(cfg, "1")
    assert launch_error(load_config(ROOT / "configs" / "tiny.yaml"), "1") is not None   # 1 x 1 != 2


def _md5s(folder: Path) -> dict[str, str]:
    import hashlib
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_stage2_with_two_processes_equals_one_process(tmp_path):
    import shutil

    from flareseg.pseudolabel.shards import shard
    base = tmp_path / "base"
    one = [s.replace("train_fine.gpus=2", "train_fine.gpus=1").replace("unlabeled=1", "unlabeled=4")
           for s in TINIER] + ["train_fine.epochs=1"]
    sets = sum((["--set", s] for s in one), [])
    tiny = str(ROOT / "configs" / "tiny.yaml")
    p = subprocess.run([sys.executable, "-m", "flareseg.pipeline", "1", "--config", tiny, "--work", str(base),
                        *sets], env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    unlabeled = json.loads(next(base.rglob("cases.json")).read_text())["unlabeled"]
    assert shard(unlabeled, 0, 2) and shard(unlabeled, 1, 2)        # both ranks get cases
    s2 = base / "stage-2-pseudolabels"
    p = subprocess.run([sys.executable, "-m", "flareseg.pipeline", "2", "--config", tiny, "--work", str(base),
                        *sets], env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    single = tmp_path / "single"
    shutil.move(str(s2), str(single))      # same work folder (same recorded paths), stage-2 again
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "flareseg.pipeline", "2", "--config", tiny, "--work", str(base), *sets],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for sub in ("raw", "scores", "pseudo_labels", "filled"):
        assert _md5s(single / sub) == _md5s(s2 / sub), sub
    assert (single / "report" / "selection.csv").read_bytes() == (s2 / "report" / "selection.csv").read_bytes()
    adds = json.loads((s2 / "training_additions.json").read_text())
    assert adds == json.loads((single / "training_additions.json").read_text())
    assert any(v["source"] == "pseudo" for v in adds.values())


def test_predict_folder_with_two_processes_writes_each_case_once_as_one_process(tmp_path):
    import SimpleITK as sitk

    from tiny_model import tiny_plans, write_model_folder
    from flareseg.pseudolabel.shards import shard
    from test_predictor import phantom_ct
    model = write_model_folder(tmp_path / "model", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)),
                               labels={0: "background", 1: "liver", 2: "kidney", 3: "tumor"}, seed=1)
    inp = tmp_path / "in"
    inp.mkdir()
    names = [f"case{i}" for i in range(5)]
    assert shard(names, 0, 2) and shard(names, 1, 2)
    for i, n in enumerate(names):
        sitk.WriteImage(phantom_ct(shape=(16, 40, 44), spacing_zyx=(4.0, 2.6, 2.2), seed=i),
                        str(inp / f"{n}_0000.nii.gz"))
    before = _md5s(inp)
    args = ["predict", "-i", str(inp), "-m", str(model), "-q", "--device", "cpu", "--statistics"]
    one = subprocess.run([sys.executable, "-m", "flareseg.cli", *args, "-o", str(tmp_path / "one")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "flareseg.cli", *args, "-o", str(tmp_path / "two")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    # the write guard's ledger (.flareseg-written.jsonl) records inodes and times: compared apart
    a, b = ({k: v for k, v in _md5s(tmp_path / d).items() if not k.startswith(".")} for d in ("one", "two"))
    assert (tmp_path / "two" / ".flareseg-written.jsonl").is_file()
    assert sorted(a) == sorted(b) == sorted([f"{n}.nii.gz" for n in names] + ["predict_report.json",
                                                                               "statistics.json"])
    assert {k: v for k, v in a.items() if k.endswith(".nii.gz")} == {k: v for k, v in b.items() if k.endswith(".nii.gz")}
    assert (tmp_path / "one" / "statistics.json").read_bytes() == (tmp_path / "two" / "statistics.json").read_bytes()
    rep = json.loads((tmp_path / "two" / "predict_report.json").read_text())
    assert [e["case"] for e in rep["cases"]] == names and rep["cases_ok"] == 5   # each case once, in order
    assert _md5s(inp) == before
