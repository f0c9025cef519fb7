"""A killed write leaves a hidden temp file; the next run of the same command removes it, even a
rerun that has nothing left to write (every case up to date)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flareseg import io as fio
from flareseg.cli import main
from tiny import write_tiny_raw


def _stale_temp(folder: Path, name: str = "x.nii.gz") -> Path:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()   # a pid that no longer runs: the writer was killed
    t = folder / f".{name}.{fio._writer_host()}-{p.pid}.abc123_x.tmp.nii.gz"
    t.write_bytes(b"half a file")
    return t


def test_recursive_removal_reaches_subfolders_only_for_dead_writers(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    deep = _stale_temp(tmp_path / "a" / "b")
    top = _stale_temp(tmp_path)
    assert fio.remove_stale_temps(tmp_path) == [top] and deep.exists()
    assert fio.remove_stale_temps(tmp_path, recursive=True) == [deep]


def test_rerun_of_clean_and_import_removes_stale_temps(tmp_path):
    raw = write_tiny_raw(tmp_path / "raw", n_unlabeled=0)
    ds, cleaned = tmp_path / "ds", tmp_path / "cleaned"
    args = ["import", "--images", raw / "imagesTr", "--labels", raw / "labelsTr",
            "--manifest", raw / "manifest.csv", "--out", ds]
    assert main(list(map(str, args))) == 0
    assert main(["clean", "--labels", str(raw / "labelsTr"), "--out", str(cleaned)]) == 0
    left = [_stale_temp(ds / "imagesTr"), _stale_temp(cleaned)]
    assert main(list(map(str, args))) == 0          # nothing to import again ...
    assert main(["clean", "--labels", str(raw / "labelsTr"), "--out", str(cleaned)]) == 0
    assert [p for p in left if p.exists()] == []     # ... and yet the leftovers are gone
