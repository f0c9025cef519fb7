"""Bad-input matrix, GPU selection of `flareseg efficiency` (issue 14 contract, issue 17): a
CUDA_VISIBLE_DEVICES / --gpu-index that names no card is a usage error found before any case runs
(exit 2, one line naming the variable's entry and why), never a silently wrong card.  NVML is a
fake with three cards."""
from __future__ import annotations

import sys

import pytest

from bad_input import check_contract, md5_tree, run_command
from flareseg.cli import main
from flareseg.evaluation import gpu_memory
from flareseg.evaluation.gpu_memory import Card

CARDS = [Card(0, "GPU-aaaa1111", "Fake A"), Card(1, "GPU-bbbb2222", "Fake B"), Card(2, "GPU-bbbc3333", "Fake C")]

ROWS = [  # id, CUDA_VISIBLE_DEVICES, --gpu-index, text the line names, reason
    ("index-not-present", "5", 0, "entry 0 '5'", "no GPU with physical index 5"),
    ("uuid-not-present", "GPU-ffff", 0, "entry 0 'GPU-ffff'", "no GPU with this UUID"),
    ("mig-not-present", "MIG-0123", 0, "entry 0 'MIG-0123'", "no GPU with this UUID"),
    ("uuid-prefix-ambiguous", "GPU-bbb", 0, "entry 0 'GPU-bbb'", "matches 2 GPUs"),
    ("entry-not-a-device", "gpu1", 0, "entry 0 'gpu1'", "not a GPU index"),
    ("empty-nothing-visible", "", 0, "CUDA_VISIBLE_DEVICES=''", "device 0 not visible"),
    ("gpu-index-beyond-entries", "0,1", 2, "CUDA_VISIBLE_DEVICES='0,1'", "device 2 not visible"),
    ("bad-entry-before-the-used-one", "9,1", 1, "entry 0 '9'", "no GPU with physical index 9"),
    ("same-card-twice", "1,GPU-bbbb", 1, "entry 1 'GPU-bbbb'", "same GPU as an earlier entry"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_efficiency_gpu_selection_bad_input(row, tmp_path, monkeypatch, capsys, caplog):
    _, visible, ordinal, name, reason = row
    monkeypatch.setattr(gpu_memory, "list_cards", lambda: ("nvml", CARDS))
    monkeypatch.setattr(gpu_memory, "_nvml_reader", lambda index: lambda: 100.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("a", "b"):
        (inputs / f"{case}_0000.nii.gz").write_bytes(case.encode())
    before = md5_tree([inputs])
    marker = tmp_path / "ran"
    out = run_command(main, ["efficiency", "--inputs", inputs, "--out", tmp_path / "eff", "--gpu-index", ordinal,
                             "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')", "{input}"], capsys, caplog)
    check_contract(out, rc=2, names=[name], reason=reason, inputs_before=before, inputs=[inputs],
                   outputs=[tmp_path])
    assert not marker.exists() and not (tmp_path / "eff").exists()   # found before any case ran
