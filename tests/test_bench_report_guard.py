"""Every bench that writes a report (--out, --json, --raw) refuses, before any work, a report path
that is one of its inputs, lands in a folder it reads, or is an existing file no bench wrote: exit 2,
one line, the inputs untouched.  A rerun replaces its own report; a full disk is one line, exit 4."""
from __future__ import annotations

import importlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench._common import refuse_input_outputs, write_json_report, write_report

REPO = Path(__file__).resolve().parents[1]


def _inputs(t: Path) -> dict[str, Path]:
    """Fake inputs (the refusal comes before any of them is opened)."""
    p = {"cfg": t / "config.yaml", "model": t / "model", "ckpt": t / "model" / "fold_0" / "checkpoint_final.pth",
         "ext": t / "external", "images": t / "images", "image": t / "images" / "case_0000.nii.gz",
         "work": t / "work", "scratch": t / "scratch"}
    files = {p["cfg"]: b"data: {}\n", p["ckpt"]: b"weights", p["model"] / "plans.json": b"{}",
             p["ext"] / "plans.json": b"{}", p["image"]: b"ct",
             p["work"] / "case_0000.nii.gz": b"ct", p["work"] / "model" / "plans.json": b"{}",
             p["work"] / "stage-1-fine" / "manifest.json": b"{}", p["scratch"] / "runs-loss-s0.json": b"{}"}
    for f, data in files.items():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    return p


# bench -> argv built from the fake inputs; each names a report path that is an input file or lies
# in an input folder
CASES = {
    "api_vs_cli": [["--work", "{work}", "--out", "{work}/case_0000.nii.gz"],
                   ["--work", "{work}", "--out", "{work}/model/plans.json"],
                   ["--work", "{work}", "--out", "{work}/model/new.md"]],
    "cutmix": [["--parts", "air", "--phantoms", "{images}", "--config", "{cfg}", "--out", "{cfg}"],
               ["--parts", "air", "--phantoms", "{images}", "--out", "{images}/cutmix.md"],
               ["--work", "{work}", "--out", "{work}/stage-1-fine/cutmix.md"]],
    "cutmix_rate": [["--configs", "{cfg}", "--out", "{cfg}"]],
    "evidence": [["--work", "{work}", "--scratch", "{scratch}", "--out", "{work}/stage-1-fine/manifest.json"],
                 ["--work", "{work}", "--scratch", "{scratch}", "--report-only", "--out",
                  "{scratch}/runs-loss-s0.json"],
                 ["--work", "{work}", "--scratch", "{work}/stage-1-fine"],
                 ["--work", "{work}", "--scratch", "{work}"]],
    "flare_efficiency": [["--model", "{model}", "--inputs", "{images}", "--out", "{model}"],
                         ["--model", "{model}", "--inputs", "{images}", "--out", "{images}"],
                         ["--model", "{model}", "--inputs", "{image}", "--out", "{image}"]],
    "loss_ablation": [["--config", "{cfg}", "--work", "{work}", "--out", "{cfg}"],
                      ["--config", "{cfg}", "--work", "{work}", "--out", "{work}/stage-1-fine"]],
    "predictor_equivalence": [["--model", "{model}", "--images", "{images}", "--out", "{ckpt}"],
                              ["--model", "{model}", "--images", "{image}", "--out", "{image}"],
                              ["--model", "{model}", "--images", "{images}", "--out", "{images}/eq.md"]],
    "pseudolabel_ranking": [["--model", "{model}", "--config", "{cfg}", "--out", "{cfg}"],
                            ["--model", "{model}", "--external", "{ext}", "--out", "{ext}/plans.json"]],
    "skipping_evidence": [["--config", "{cfg}", "--model", "{model}", "--json", "{ckpt}"],
                          ["--config", "{cfg}", "--model", "{model}", "--out", "{cfg}"]],
    "trainer_throughput": [["--config", "{cfg}", "--work", "{work}", "--raw", "{cfg}"],
                           ["--config", "{cfg}", "--work", "{work}", "--raw", "{work}/stage-1-fine/raw.json"]],
}


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.mark.parametrize("bench,argv", [(b, a) for b, cases in CASES.items() for a in cases],
                         ids=[f"{b}-{i}" for b, cases in CASES.items() for i in range(len(cases))])
def test_bench_refuses_a_report_path_that_is_an_input(bench, argv, tmp_path, capsys, monkeypatch):
    main = importlib.import_module(f"bench.{bench}").main
    paths = {k: str(v) for k, v in _inputs(tmp_path).items()}
    before = _tree(tmp_path)
    monkeypatch.chdir(tmp_path)                   # nothing relative lands in the repository
    with pytest.raises(SystemExit) as e:
        main([a.format(**paths) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before              # no input changed, nothing written or created


def _model(t: Path) -> Path:
    (t / "model" / "fold_0").mkdir(parents=True)
    (t / "model" / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    return t / "model"


def _refused(capsys, outputs, reads, model=None, folders=()) -> str:
    with pytest.raises(SystemExit) as e:
        refuse_input_outputs(outputs, reads, model, folders)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    return err


def test_guard_without_a_model_folder(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("x: 1")
    link = tmp_path / "link.yaml"
    os.symlink(cfg, link)
    assert "would overwrite the input" in _refused(capsys, {"--out": cfg}, [cfg, None])
    assert "would overwrite the input" in _refused(capsys, {"--out": link}, [cfg])        # a symlink to it
    refuse_input_outputs({"--out": tmp_path / "report.md", "--json": None}, [cfg])       # beside it: fine
    refuse_input_outputs({"--out": tmp_path / "report.md"}, [cfg], None, [None])
    assert cfg.read_text() == "x: 1"


def test_guard_with_several_input_folders(tmp_path, capsys):
    work, images, model = tmp_path / "work", tmp_path / "images", _model(tmp_path)
    (work / "stage-1").mkdir(parents=True)
    (work / "stage-1" / "plans.json").write_text("{}")
    images.mkdir()
    (images / "a_0000.nii.gz").write_bytes(b"ct")
    new = tmp_path / "not-yet"                       # a folder the bench will read, not made yet
    folders = [work, new]
    for out in (work / "r.md", work / "stage-1" / "plans.json", work / "stage-1" / "new.md",
                images / "r.md", images / "a_0000.nii.gz", new / "r.md", model / "fold_0" / "r.md"):
        err = _refused(capsys, {"--out": out}, [images], model, folders)   # a folder among reads is one too
        assert any(str(f) in err for f in (work, images, new, model)), err
    assert "model folder" in _refused(capsys, {"--json": model / "plans.json"}, [], model, folders)
    refuse_input_outputs({"--out": tmp_path / "reports" / "r.md"}, [images], model, folders)
    report = tmp_path / "r.md"                        # a bench's own earlier report is rewritten
    write_report("earlier run", report, echo=False)
    refuse_input_outputs({"--out": report}, [images], model, folders)
    assert (images / "a_0000.nii.gz").read_bytes() == b"ct" and (work / "stage-1" / "plans.json").read_text() == "{}"
    assert not new.exists()


# every bench that writes a report -> (argv reaching the guard, the report flags); fake inputs as above
REPORTS = {
    "api_vs_cli": (["--work", "{work}"], ["--out"]),
    "cleaning_speed": ([], ["--out"]),
    "cpu_levers": ([], ["--out"]),
    "cutmix": (["--work", "{work}"], ["--out"]),
    "cutmix_rate": (["--configs", "{cfg}"], ["--out"]),
    "evaluation_speed": ([], ["--out"]),
    "evidence": (["--work", "{work}", "--scratch", "{scratch}"], ["--out"]),
    "loss_ablation": (["--config", "{cfg}", "--work", "{work}"], ["--out"]),
    "predictor_equivalence": (["--model", "{model}", "--images", "{images}"], ["--out"]),
    "predictor_speed": ([], ["--out"]),
    "pseudolabel_ranking": (["--model", "{model}", "--config", "{cfg}"], ["--out"]),
    "real_ct_dsc": (["--model", "{model}"], ["--out", "--json"]),
    "real_ct_probe": (["--model", "{model}"], ["--out", "--json"]),
    "skipping_evidence": (["--config", "{cfg}", "--model", "{model}"], ["--out", "--json"]),
    "trainer_throughput": (["--config", "{cfg}", "--work", "{work}"], ["--raw"]),
}


@pytest.mark.parametrize("bench,flag", [(b, f) for b, (_, flags) in REPORTS.items() for f in flags])
def test_bench_refuses_to_replace_a_file_no_bench_wrote(bench, flag, tmp_path, capsys, monkeypatch):
    """`--json thesis.txt` beside the inputs: someone's file is refused before any work (exit 2,
    one line naming it and --overwrite), and stays as it was."""
    main = importlib.import_module(f"bench.{bench}").main
    paths = {k: str(v) for k, v in _inputs(tmp_path).items()}
    mine = tmp_path / "mine" / "thesis.txt"
    mine.parent.mkdir()
    mine.write_text("my thesis")
    if bench == "loss_ablation":                # --out is its results folder; summary.json in it
        mine = mine.parent / "summary.json"
        mine.write_text("my thesis")
    target = mine.parent if bench == "loss_ablation" else mine
    before = _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([a.format(**paths) for a in REPORTS[bench][0]] + [flag, str(target)])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert str(mine) in err and "--overwrite" in err, err
    assert _tree(tmp_path) == before


def test_report_writer_replaces_its_own_report_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "reports" / "r.json"
    write_json_report({"run": 1}, out)
    refuse_input_outputs({"--json": out})                  # a rerun may replace it
    write_json_report({"run": 2}, out)
    assert out.read_text() == '{\n "run": 2\n}\n'
    out.write_text('{"run": 2, "edited": "by hand"}')     # changed since: no longer the bench's
    for check in (lambda: refuse_input_outputs({"--json": out}), lambda: write_json_report({"run": 3}, out)):
        with pytest.raises(SystemExit) as e:
            check()
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err, err
        assert out.read_text() == '{"run": 2, "edited": "by hand"}'
    refuse_input_outputs({"--json": out}, overwrite=True)
    write_json_report({"run": 3}, out, overwrite=True)
    refuse_input_outputs({"--json": out})                  # recorded again
    assert out.read_text() == '{\n "run": 3\n}\n'
    assert sorted(p.name for p in out.parent.iterdir()) == [".flareseg-written.jsonl", "r.json"]   # no temp


def _run_bench(argv: list[str], fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # a write past the limit fails with EFBIG
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if fsize is not None else None)


def test_a_bench_rerun_replaces_its_report_and_a_full_disk_is_one_line(tmp_path):
    """The whole process: a rerun replaces its own report (no --overwrite); a report that cannot be
    written (file-size limit: EFBIG, as a full disk's ENOSPC) ends it with one line naming the
    report, exit 4, no traceback, the earlier report and no temporary file left."""
    out = tmp_path / "speed.md"
    argv = ["-m", "bench.cleaning_speed", "--cases", "1", "--shape", "12", "24", "24", "--repeats", "1",
            "--out", str(out)]
    for _ in range(2):
        p = _run_bench(argv)
        assert p.returncode == 0, p.stderr
    first = out.read_text()
    assert "cleaning" in first.lower()
    p = _run_bench(argv, fsize=len(first) // 2)
    assert p.returncode == 4, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == [f"bench.cleaning_speed: {out}: File too large (EFBIG)"], lines
    assert out.read_text() == first
    assert sorted(f.name for f in tmp_path.iterdir()) == [".flareseg-written.jsonl", "speed.md"]


def test_a_bench_given_a_bad_config_says_so_in_one_line(tmp_path):
    """A config with an unknown key (or a pipe, a missing file) is a usage error: one line naming
    the bench, the file and the key, exit 2, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("cutmix: {bogus_key: 1}\n")
    p = _run_bench(["-m", "bench.cutmix_rate", "--configs", str(bad), "--out", str(tmp_path / "rate.md")])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and lines[0].startswith(f"bench.cutmix_rate: {bad}: unknown key 'cutmix.bogus_key'"), lines
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bad.yaml"]
