"""The process boundary (flareseg.boundary): Ctrl-C, SIGTERM and OS errors no command handled end
`flareseg` and `python -m flareseg.pipeline` with one line and the documented exit code, with no
traceback and no temporary file left."""
from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flareseg.boundary import EXIT_INTERRUPTED, EXIT_OS_ERROR, EXIT_TERMINATED, run_at_boundary

REPO = Path(__file__).resolve().parents[1]


def _user_lines(stderr: str) -> list[str]:
    """stderr lines without progress bars (tqdm redraws with carriage returns)."""
    out = []
    for ln in stderr.replace("\r", "\n").splitlines():
        if ln.strip() and "%|" not in ln and "case/s" not in ln:
            out.append(ln)
    return out


def _default_sigint() -> None:
    """Child preexec: SIGINT back to its default.  A test run started in the background by a
    non-interactive shell (``cmd &``, as some CI runners do) inherits SIGINT ignored, and Python then
    never raises KeyboardInterrupt; the tests below are about a user pressing Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("sig,rc,word", [(signal.SIGINT, EXIT_INTERRUPTED, "interrupted"),
                                         (signal.SIGTERM, EXIT_TERMINATED, "terminated")])
def test_signal_during_a_long_command_is_one_line_and_leaves_no_temp(tmp_path, sig, rc, word):
    out = tmp_path / "ph"
    p = subprocess.Popen([sys.executable, "-m", "flareseg.cli", "phantoms", "--out", str(out), "--labeled", "400",
                          "--tumor-only", "0", "--unlabeled", "0", "--validation", "0", "--size-xy", "64", "64"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_default_sigint)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120 and len(list(out.rglob("*.nii.gz"))) < 4:
        time.sleep(0.02)
    assert p.poll() is None, "the command ended before the signal"
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    lines = _user_lines(stderr)
    assert p.returncode == rc, stderr
    assert "Traceback" not in stderr + stdout
    assert len(lines) == 1 and lines[0].startswith(f"flareseg: {word}"), lines
    assert _temps(out) == []


def _fsize_limit(limit: int):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG instead
    return pre


def test_export_model_on_a_full_disk_is_one_line_exit_4(tmp_path):
    """torch's writer reports a full disk as RuntimeError: it becomes an OSError naming the file
    (without the temporary folder), the boundary prints it, nothing is left."""
    from tiny_model import write_model_folder
    model = write_model_folder(tmp_path / "model")
    size = (model / "fold_0" / "checkpoint_final.pth").stat().st_size
    out = tmp_path / "export"
    p = subprocess.run([sys.executable, "-m", "flareseg.cli", "export-model", "-m", str(model), "-o", str(out)],
                       cwd=REPO, capture_output=True, text=True, preexec_fn=_fsize_limit(size // 2), timeout=300)
    lines = _user_lines(p.stderr)
    assert p.returncode == EXIT_OS_ERROR, p.stderr
    assert "Traceback" not in p.stderr
    assert len(lines) == 1 and str(out / "fold_0" / "checkpoint_final.pth") in lines[0], lines
    assert not out.exists() and _temps(tmp_path) == []


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system"),
                                         (errno.EACCES, "Permission denied")])
def test_os_error_at_the_cli_is_one_line_naming_file(monkeypatch, capsys, code, reason):
    import flareseg.cli as cli

    def fail(argv):
        raise OSError(code, os.strerror(code), "/data/out/report.json")
    monkeypatch.setattr(cli, "_main", fail)
    assert cli.main(["evaluate"]) == EXIT_OS_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("flareseg: /data/out/report.json: " + reason) and errno.errorcode[code] in err


def test_os_error_without_filename_names_the_open_file(tmp_path, capsys):
    """``f.write`` on a full disk raises without ``filename``: the open file of the failing frame
    is named, by the name its temporary file was to get."""
    from flareseg.io import atomic_path

    def write():
        with atomic_path(tmp_path / "table.csv") as tmp:
            with open(tmp, "w") as f:
                f.write("a,b\n")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert run_at_boundary(write, "flareseg") == EXIT_OS_ERROR
    err = capsys.readouterr().err
    assert err.strip() == f"flareseg: {tmp_path / 'table.csv'}: No space left on device (ENOSPC)"
    assert list(tmp_path.iterdir()) == []


def test_interrupt_in_process_removes_the_temp_and_exits_130(tmp_path, capsys):
    from flareseg.io import atomic_path

    def write():
        with atomic_path(tmp_path / "label.nii.gz") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert run_at_boundary(write, "flareseg") == EXIT_INTERRUPTED
    assert capsys.readouterr().err.startswith("flareseg: interrupted")
    assert list(tmp_path.iterdir()) == []


def test_pipeline_main_has_the_same_boundary(monkeypatch, capsys):
    import flareseg.pipeline.__main__ as pm

    def fail(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(pm, "_main", fail)
    assert pm.main(["1"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err.startswith("python -m flareseg.pipeline: interrupted")


def test_normal_exit_codes_pass_through():
    assert run_at_boundary(lambda: 3, "x") == 3 and run_at_boundary(lambda: None, "x") == 0
    with pytest.raises(SystemExit):   # argparse's usage errors keep their own exit
        run_at_boundary(lambda: sys.exit(2), "x")


CHILD = """
import sys, time
from pathlib import Path
from flareseg.boundary import run_at_boundary
from flareseg.io import atomic_path

def write():
    with atomic_path(Path(sys.argv[1]) / "slow.json") as tmp:
        tmp.write_text("{")
        Path(sys.argv[1], "started").touch()
        time.sleep(120)
sys.exit(run_at_boundary(write, "child"))
"""

PARENT = """
import sys
from flareseg.boundary import call_child, run_at_boundary
sys.exit(run_at_boundary(lambda: call_child([sys.executable, "-c", sys.argv[1], sys.argv[2]], own_s=0.5), "parent"))
"""


@pytest.mark.parametrize("sig,rc", [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_TERMINATED)])
def test_pipeline_all_passes_the_signal_to_its_stage_process(tmp_path, sig, rc):
    """`all` runs each stage as a child (call_child): a signal to the parent alone reaches the
    child, which removes its temp before the parent exits (subprocess.call killed it after 0.25 s)."""
    p = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(tmp_path)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_default_sigint)
    t0 = time.monotonic()
    while not (tmp_path / "started").exists() and time.monotonic() - t0 < 60:
        time.sleep(0.02)
    assert _temps(tmp_path), "the child's temp should exist while it writes"
    p.send_signal(sig)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == rc, stderr
    assert "Traceback" not in stderr
    assert _temps(tmp_path) == [] and not (tmp_path / "slow.json").exists()
    assert [ln.split(":")[0] for ln in _user_lines(stderr)] == ["child", "parent"]


def test_forked_children_get_the_default_sigterm_back():
    """Under the boundary SIGTERM unwinds (Terminated); a child forked there (multiprocessing pool,
    nnU-Net data-loader worker) must die on SIGTERM as it would without flareseg: with the unwinding
    handler inherited, Pool.terminate() hung in nnU-Net's preprocessing of a killed stage."""
    import signal as s
    from flareseg.boundary import sigterm_unwinds

    with sigterm_unwinds():
        assert s.getsignal(s.SIGTERM) is not s.SIG_DFL
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                    # child: report its handler, then wait to be killed
            os.close(r)
            os.write(w, b"default" if s.getsignal(s.SIGTERM) == s.SIG_DFL else b"flareseg")
            os.close(w)
            time.sleep(60)
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            seen = f.read()
        os.kill(pid, s.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert seen == b"default"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == s.SIGTERM   # died on it, no unwinding
