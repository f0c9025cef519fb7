"""A pipeline stage without -v shows flareseg's own lines; everything third-party goes to its log
file (flareseg.console.stage_output)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

#: what nnU-Net (or another package) says that must not reach the terminal
NOISE = ("Please cite", "INFO root", "copying", "'data_identifier'", "Using device", "Epoch time",
         "Searching in", "Trainer 'FlareSegTrainer'", "FutureWarning", "This is the configuration")


def _lines(text: str) -> list[str]:
    """Terminal lines: newline-separated (a progress bar redraws with \\r on one line)."""
    return [ln for ln in text.split("\n") if ln.strip()]


def test_stage_output_routes_prints_children_and_records(tmp_path):
    """print, a C-level write, a child process, a third-party logger and a warning go to the log;
    flareseg's INFO record and a bar on sys.stderr reach the terminal; all is restored after."""
    code = textwrap.dedent(f"""
        import logging, os, subprocess, sys, warnings
        from flareseg.console import set_log_levels, stage_output
        set_log_levels(False)
        with stage_output({str(tmp_path / "logs" / "stage.log")!r}, title="t"):
            print("PRINTED by a library")
            os.write(1, b"FD1 write\\n"); os.write(2, b"FD2 write\\n")
            subprocess.run([sys.executable, "-c", "import sys; print('CHILD out'); print('CHILD err', file=sys.stderr)"])
            logging.getLogger().info("ROOT info (nnU-Net's copying)")
            logging.getLogger("nnunetv2.x").info("NNUNET info")
            warnings.warn("A WARNING from a package")
            logging.getLogger("flareseg.pipeline.stage").info("OWN line")
            sys.stderr.write("BAR on stderr\\n")
        print("AFTER on stdout")
        logging.getLogger("flareseg.x").info("AFTER record")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "logs" / "stage.log").read_text()
    for s in ("PRINTED", "FD1 write", "FD2 write", "CHILD out", "CHILD err", "ROOT info", "NNUNET info",
              "A WARNING", "OWN line"):
        assert s in log, s
    terminal = r.stdout + r.stderr
    for s in ("PRINTED", "FD1", "FD2", "CHILD", "ROOT info", "NNUNET", "A WARNING"):
        assert s not in terminal, s
    assert "OWN line" in r.stderr and "BAR on stderr" in r.stderr
    assert r.stdout == "AFTER on stdout\n" and "AFTER record" in r.stderr


@pytest.mark.slow
def test_tiny_stage_is_quiet_and_its_log_has_it_all(tmp_path):
    cmd = [sys.executable, "-m", "flareseg.pipeline", "1", "--config", str(TINY), "--work", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, cwd=REPO, timeout=1200)   # bytes: keep the \r of bars
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, r.stderr[-3000:]
    terminal = _lines(r.stdout) + _lines(r.stderr)
    assert len(terminal) <= 60, "\n".join(terminal)
    for s in NOISE:
        assert not any(s in ln for ln in terminal), s
    log_file = tmp_path / "stage-1-fine" / "logs" / "stage.log"
    assert f"full output in {log_file}" in r.stderr.split("\n")[0]
    assert any(ln.startswith("train fine:") and "pseudo-Dice" in ln for ln in r.stderr.split("\r"))
    assert "stage-1 (fine) finished in" in r.stderr
    log = log_file.read_text()
    for s in ("Please cite", "INFO root: copying", "'data_identifier'", "train_loss", "stage-1: step train"):
        assert s in log, s
    # -v shows nnU-Net's text on the terminal again (the plans it prints while planning)
    v = subprocess.run(cmd + ["--force", "-v"], capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert v.returncode == 0, v.stderr[-3000:]
    assert "'data_identifier'" in v.stdout + v.stderr


def test_a_failing_stage_names_its_log(tmp_path, monkeypatch, capsys):
    """An unexpected error inside a quiet stage: the traceback reaches the caller and a line
    names the log file that holds the third-party output."""
    import flareseg.pipeline.__main__ as pm

    def boom(n, cfg, work, force=False):
        print("nnU-Net says something")
        raise RuntimeError("boom")
    monkeypatch.setattr(pm, "run_stage", boom)
    with pytest.raises(RuntimeError, match="boom"):
        pm._main(["1", "--config", str(TINY), "--work", str(tmp_path)])
    log_file = tmp_path / "stage-1-fine" / "logs" / "stage.log"
    assert f"stage-1 failed; the output of nnU-Net and other packages is in {log_file}" in capsys.readouterr().err
    assert "nnU-Net says something" in log_file.read_text()
