"""GPU memory measurement without a GPU (issue 17): the card sampled is the one the measured process
runs on (CUDA_VISIBLE_DEVICES -> physical index), the AUC over real sample times next to the
official sum x interval, and the used memory before a case (a parent's CUDA context) subtracted
and reported.  NVML / nvidia-smi are replaced by fakes."""
from __future__ import annotations

import csv
import json
import sys

import pytest

from flareseg.evaluation import efficiency, gpu_memory
from flareseg.evaluation.efficiency import measure_efficiency, summarize, write_efficiency_reports
from flareseg.evaluation.gpu_memory import (Backend, Card, auc_from_times, probe_backend, sample_until,
                                            visible_card)

A, B, C = "GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-bbbc3333-0000"
CARDS = [(0, A), (1, B), (2, C)]


@pytest.mark.parametrize("visible, ordinal, want", [
    (None, 0, 0),                         # unset: every card, physical order
    (None, 2, 2),
    ("2", 0, 2),                          # cuda:0 is physical 2
    ("2,0", 1, 0),                        # cuda:1 is the second entry
    (" 1 , 2 ", 1, 2),                    # spaces around entries
    ("GPU-bbbb2222-0000", 0, 1),          # full UUID
    ("GPU-aaaa", 0, 0),                   # unique UUID prefix, as CUDA accepts
    ("GPU-bbbc,1", 1, 1),                 # mixed UUID and index
    ("1,7", 0, 1),                        # an unresolvable entry after the one used hides nothing
])
def test_visible_device_maps_to_the_physical_card(visible, ordinal, want):
    assert visible_card(visible, CARDS, ordinal) == CARDS[want]


SMI_L = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa1111-0000)
  MIG 1g.5gb      Device  0: (UUID: MIG-1234abcd-5678)
  MIG 3g.20gb     Device  1: (UUID: MIG-9999eeee-0000)
GPU 1: NVIDIA H200 (UUID: GPU-bbbb2222-0000)
"""


def test_nvidia_smi_list_is_parsed_with_mig_instances_on_their_card():
    cards = gpu_memory.parse_smi_list(SMI_L)
    assert cards == [Card(0, "GPU-aaaa1111-0000", "NVIDIA A100-SXM4-40GB"),
                     Card(0, "MIG-1234abcd-5678", "NVIDIA A100-SXM4-40GB MIG 1g.5gb"),
                     Card(0, "MIG-9999eeee-0000", "NVIDIA A100-SXM4-40GB MIG 3g.20gb"),
                     Card(1, "GPU-bbbb2222-0000", "NVIDIA H200")]


def test_mig_entries_map_to_their_card():
    cards = [(c.index, c.uuid) for c in gpu_memory.parse_smi_list(SMI_L)]
    assert visible_card("MIG-9999", cards) == (0, "MIG-9999eeee-0000")
    assert visible_card("1,MIG-1234abcd-5678", cards, 1) == (0, "MIG-1234abcd-5678")
    assert visible_card(None, cards, 1) == (1, "GPU-bbbb2222-0000")      # unset: the cards, not instances
    assert visible_card("0", cards) == (0, "GPU-aaaa1111-0000")
    with pytest.raises(ValueError, match="matches 2 GPUs"):
        visible_card("MIG-", cards)


def test_probe_backend_names_the_mig_instance_and_samples_its_card(monkeypatch):
    made = []
    monkeypatch.setattr(gpu_memory, "list_cards", lambda: ("nvidia-smi", gpu_memory.parse_smi_list(SMI_L)))
    monkeypatch.setattr(gpu_memory, "_nvml_reader", lambda index: made.append(index) or (lambda: 1.0))
    b = probe_backend(0, visible="MIG-9999eeee-0000")
    assert made == [0] and b.card == Card(0, "MIG-9999eeee-0000", "NVIDIA A100-SXM4-40GB MIG 3g.20gb")


@pytest.mark.parametrize("visible, ordinal, reason", [
    ("7", 0, "no GPU with physical index 7"),
    ("GPU-ffff", 0, "no GPU with this UUID"),
    ("MIG-ffff", 0, "no GPU with this UUID"),
    ("GPU-bbb", 0, "matches 2 GPUs"),                 # ambiguous prefix
    ("cuda0", 0, "not a GPU index"),
    ("-1", 0, "no GPU with physical index -1"),
    ("", 0, "device 0 not visible"),                  # empty: nothing visible
    ("0,1", 2, "device 2 not visible"),
    ("7,1", 1, "entry 0 '7'"),                        # CUDA stops at the first bad entry
    ("1,1", 1, "same GPU as an earlier entry"),
    (None, 3, "only 3 GPU(s) present"),
])
def test_visible_device_errors_name_the_entry_and_reason(visible, ordinal, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")) as e:
        visible_card(visible, CARDS, ordinal)
    if visible:
        assert f"CUDA_VISIBLE_DEVICES={visible!r}" in str(e.value)


@pytest.fixture
def fake_cards(monkeypatch):
    """Three cards behind a fake NVML: the reader of physical index i reads 1000 * (i + 1) MB."""
    made = []

    def reader(index):
        made.append(index)
        return lambda: 1000.0 * (index + 1)
    monkeypatch.setattr(gpu_memory, "list_cards",
                        lambda: ("nvml", [Card(i, u, f"Fake H{i}") for i, u in CARDS]))
    monkeypatch.setattr(gpu_memory, "_nvml_reader", reader)
    return made


def test_probe_backend_samples_the_visible_card(fake_cards, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{B},0")
    b = probe_backend(0)
    assert fake_cards == [1] and b.card == Card(1, B, "Fake H1") and b.name == "nvml"
    assert b.reader() == 2000.0                    # physical card 1, not NVML's index 0
    assert probe_backend(1).card.index == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert probe_backend(0).card.index == 0
    assert probe_backend(0, visible="2").card.uuid == C
    with pytest.raises(ValueError, match="no GPU with physical index 5"):
        probe_backend(0, visible="5")


def test_no_gpu_means_no_backend(monkeypatch):
    monkeypatch.setattr(gpu_memory, "list_cards", lambda: None)
    assert probe_backend(0, visible="7") is None      # nothing to sample: not an error


# --------------------------------------------------------------------------- AUC over real times

def test_auc_from_regular_times_is_the_official_sum():
    samples = [100.0, 300.0, 250.0, 50.0]
    times = [0.0, 0.1, 0.2, 0.3]
    assert auc_from_times(times, samples, 0.1) == pytest.approx(sum(samples) * 0.1)


def test_auc_from_irregular_times():
    """Samples at 0, 0.1, 0.5, 0.6 s (a query stalled 0.4 s): trapezoids over the real gaps, the
    end samples held 0.05 s each -- the official sum x 0.1 misses the stall."""
    samples, times = [1000.0, 2000.0, 2000.0, 1000.0], [0.0, 0.1, 0.5, 0.6]
    want = 0.05 * 1000 + 0.1 * 1500 + 0.4 * 2000 + 0.1 * 1500 + 0.05 * 1000
    assert auc_from_times(times, samples, 0.1) == pytest.approx(want) == pytest.approx(1200.0)
    assert sum(samples) * 0.1 == pytest.approx(600.0)
    with pytest.raises(ValueError, match="3 sample times for 4 samples"):
        auc_from_times(times[:3], samples, 0.1)


def test_slow_queries_make_the_official_auc_too_low_and_the_time_auc_right():
    """A constant 1000 MB read by a query taking 0.25 s (slow nvidia-smi) for 10 samples: the
    official sum x 0.1 counts 1.0 s, the real curve spans ~2.5 s."""
    now = [0.0]
    samples, times = [], []

    def read():
        now[0] += 0.25
        return 1000.0
    sample_until(read, 0.1, "fixed", samples, lambda: len(samples) >= 10, lambda: now[0],
                 lambda s: now.__setitem__(0, now[0] + s), times)
    assert len(times) == 10 and times[1] - times[0] == pytest.approx(0.25)
    assert sum(samples) * 0.1 == pytest.approx(1000.0)
    assert auc_from_times(times, samples, 0.1) == pytest.approx(1000.0 * (9 * 0.25 + 0.1))


# --------------------------------------------------------------------------- harness with a fake card

class FakeCard:
    """Used memory of a card where a parent process holds 900 MB (the baseline read before the
    case starts, and the first sample); the measured case adds 500 MB after that."""

    def __init__(self):
        self.reads = 0

    def read(self) -> float:
        self.reads += 1
        return 900.0 if self.reads <= 2 else 1400.0   # read 1: baseline; read 2: first sample


def test_baseline_subtracted_and_card_named(tmp_path, monkeypatch):
    card = FakeCard()
    backend = Backend("nvml", card.read, Card(3, "GPU-dddd", "Fake H200"))
    monkeypatch.setattr(efficiency, "cuda_context_alive", lambda: True)   # a parent CUDA context
    inp = tmp_path / "c1_0000.nii.gz"
    inp.write_bytes(b"x")
    before = inp.read_bytes()
    rows = measure_efficiency([sys.executable, "-c", "import time; time.sleep(0.5)", "{input}"], [inp],
                              tmp_path / "eff", interval=0.05, backend=backend)
    (row,) = rows
    assert row["returncode"] == 0 and inp.read_bytes() == before
    assert (row["gpu_name"], row["gpu_physical_index"], row["gpu_uuid"]) == ("Fake H200", 3, "GPU-dddd")
    assert row["gpu_parent_context"] is True
    assert row["gpu_baseline_mb"] == 900.0 and row["gpu_max_mb"] == 1400.0 and row["gpu_max_net_mb"] == 500.0
    n = row["gpu_samples"]
    assert n >= 3
    assert row["gpu_auc_mb_s"] == pytest.approx((900 + 1400 * (n - 1)) * 0.05, abs=0.1)
    assert row["gpu_auc_net_mb_s"] < row["gpu_auc_time_mb_s"]
    assert row["gpu_auc_net_mb_s"] == pytest.approx(row["gpu_auc_time_mb_s"] * 500 / 1400, rel=0.2)
    summ = summarize(rows)
    assert summ["gpu_card"] == {"name": "Fake H200", "physical_index": 3, "uuid": "GPU-dddd"}
    assert summ["gpu_parent_context"] is True and summ["gpu_baseline_mb_max"] == 900.0
    assert summ["gpu_max_net_mb"] == 500.0 and summ["gpu_auc_time_mb_s_mean"] == row["gpu_auc_time_mb_s"]
    write_efficiency_reports(rows, summ, tmp_path / "eff")
    with open(tmp_path / "eff" / "efficiency.csv") as f:
        (csv_row,) = list(csv.DictReader(f))
    assert csv_row["gpu_uuid"] == "GPU-dddd" and float(csv_row["gpu_max_net_mb"]) == 500.0
    assert json.loads((tmp_path / "eff" / "efficiency.json").read_text())["summary"]["gpu_card"]["physical_index"] == 3


def test_gpu_figures_with_a_drifting_interval():
    """The figures of one case from given samples and times: official, time-based, net of baseline."""
    samples, times = [1000.0, 2000.0, 2000.0, 1000.0], [0.0, 0.1, 0.5, 0.6]
    f = efficiency.gpu_figures(samples, times, 0.1, baseline=1000.0)
    assert f["gpu_auc_mb_s"] == 600.0 and f["gpu_auc_time_mb_s"] == 1200.0
    assert f["gpu_period_mean_s"] == pytest.approx(0.2)
    assert f["gpu_max_net_mb"] == 1000.0 and f["gpu_auc_net_mb_s"] == pytest.approx(0.1 * 500 + 0.4 * 1000 + 0.1 * 500)
    assert efficiency.gpu_figures(samples, times, 0.1, baseline=None)["gpu_max_net_mb"] is None


def test_slow_reads_are_reported_as_drift(tmp_path, caplog):
    """Reads taking 0.08 s against a 0.02 s interval: the mean period is logged next to both AUCs."""
    import time

    def slow() -> float:
        time.sleep(0.08)
        return 1000.0
    inp = tmp_path / "c1_0000.nii.gz"
    inp.write_bytes(b"x")
    with caplog.at_level("WARNING"):
        (row,) = measure_efficiency([sys.executable, "-c", "import time; time.sleep(0.4)", "{input}"], [inp],
                                    tmp_path / "eff", interval=0.02, backend=Backend("nvidia-smi", slow, Card(0, A)))
    assert row["gpu_period_mean_s"] >= 0.07
    assert row["gpu_auc_time_mb_s"] > 2 * row["gpu_auc_mb_s"]
    assert any("not 0.020 s" in r.getMessage() and "official AUC" in r.getMessage() for r in caplog.records)


def test_cli_names_the_sampled_card(tmp_path, monkeypatch, capsys, caplog, fake_cards):
    """`flareseg efficiency` under CUDA_VISIBLE_DEVICES=2 samples physical card 2 and says so."""
    from flareseg.cli import main
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    monkeypatch.setattr(gpu_memory, "cuda_context_alive", lambda: False)
    inp = tmp_path / "c1_0000.nii.gz"
    inp.write_bytes(b"x")
    assert main(["efficiency", "--inputs", str(inp), "--out", str(tmp_path / "eff"), "--interval", "0.05",
                 "--", sys.executable, "-c", "import time; time.sleep(0.3)", "{input}"]) == 0
    out = capsys.readouterr().out
    assert f"GPU sampled: Fake H2 (physical index 2, {C})" in out
    summ = json.loads((tmp_path / "eff" / "efficiency.json").read_text())["summary"]
    assert summ["gpu_max_mb"] == 3000.0 and summ["gpu_card"]["uuid"] == C and summ["gpu_max_net_mb"] == 0.0


# --------------------------------------------------------------------------- the GPU owner's command

def test_flare_efficiency_bench_table(tmp_path, monkeypatch, fake_cards, capsys):
    """bench/flare_efficiency.py (docs/benchmarks.md's one command): both predictors measured per
    case with the official cadence on the visible card, one table.  The predictors are replaced by
    copy commands; the stock script must at least compile."""
    from bench import flare_efficiency as mod

    compile(mod.STOCK, "stock", "exec")
    copy = [sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])", "{input}", "{output}"]
    monkeypatch.setattr(mod, "ours_command", lambda model, device: copy)
    monkeypatch.setattr(mod, "stock_command", lambda model, device, mirroring: copy)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for c in ("a", "b"):
        (inputs / f"{c}_0000.nii.gz").write_bytes(c.encode())
    model = tmp_path / "model"          # a report may not land inside the model folder
    model.mkdir()
    assert mod.main(["--model", str(model), "--inputs", str(inputs), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "flare_efficiency.md").read_text()
    assert "GPU sampled: Fake H1 (physical index 1, GPU-bbbb2222-0000)" in text
    summary_rows = [ln for ln in text.splitlines() if ln.startswith("| flareseg |") or ln.startswith("| stock")]
    assert len(summary_rows) == 2 and all("| 2 | 0 |" in ln for ln in summary_rows)
    assert sum(ln.startswith("| a |") or ln.startswith("| b |") for ln in text.splitlines()) == 4
    for d in ("flareseg", "stock"):
        s = json.loads((tmp_path / "out" / d / "efficiency.json").read_text())["summary"]
        assert s["sampling"] == "official" and s["interval_s"] == 0.1 and s["gpu_max_mb"] == 2000.0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4")
    assert mod.main(["--model", str(model), "--inputs", str(inputs), "--out", str(tmp_path / "o2")]) == 2
    assert "no GPU with physical index 4" in capsys.readouterr().err
