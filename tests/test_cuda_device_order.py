"""Numeric ``CUDA_VISIBLE_DEVICES`` entries follow ``CUDA_DEVICE_ORDER`` (issue 26, item 6): CUDA
numbers devices fastest first unless ``PCI_BUS_ID``, NVML in PCI order.  The CUDA driver's order
and NVML are fakes."""
from __future__ import annotations

import subprocess

import pytest

from flareseg.evaluation import gpu_memory
from flareseg.evaluation.gpu_memory import Card, probe_backend, visible_card

A, B, C = "GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000"
CARDS = [(0, A), (1, B), (2, C)]          # NVML: PCI order; card 2 is the fastest
FASTEST_FIRST = [C, A, B]


@pytest.mark.parametrize("visible, ordinal, want", [
    (None, 0, C), (None, 2, B),            # unset: CUDA's order
    ("0", 0, C), ("1,2", 1, B),            # numbers index CUDA's order
    (B, 0, B), ("GPU-cccc,1", 1, A),       # UUIDs name cards whatever the order
])
def test_numbers_follow_cuda_order(visible, ordinal, want):
    assert visible_card(visible, CARDS, ordinal, cuda_order=FASTEST_FIRST)[1] == want


def test_a_number_naming_a_uuid_entry_again_is_refused():
    with pytest.raises(ValueError, match="same GPU as an earlier entry"):
        visible_card("GPU-cccc,0", CARDS, 1, cuda_order=FASTEST_FIRST)


def test_unknown_cuda_order_is_nvml_order_and_bad_numbers_name_cuda_index():
    assert visible_card("0", CARDS) == (0, A)
    with pytest.raises(ValueError, match="no GPU with CUDA index 3"):
        visible_card("3", CARDS, cuda_order=FASTEST_FIRST)


@pytest.mark.parametrize("order, want", [(None, C), ("FASTEST_FIRST", C), ("PCI_BUS_ID", A)])
def test_probe_backend_honours_cuda_device_order(order, want, monkeypatch):
    asked = []

    def driver(o):
        asked.append(o)
        return [A, B, C] if o == "PCI_BUS_ID" else FASTEST_FIRST

    monkeypatch.setattr(gpu_memory, "cuda_order_uuids", driver)
    monkeypatch.setattr(gpu_memory, "list_cards", lambda: ("nvml", [Card(i, u, f"Fake {i}") for i, u in CARDS]))
    monkeypatch.setattr(gpu_memory, "_nvml_reader", lambda index: lambda: float(index))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    if order is None:
        monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    else:
        monkeypatch.setenv("CUDA_DEVICE_ORDER", order)
    assert probe_backend(0).card.uuid == want and asked == [order]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", B)      # a UUID needs no order
    assert probe_backend(0).card.uuid == B and asked == [order]


def test_driver_is_asked_with_every_device_visible(monkeypatch):
    seen = {}

    def run(cmd, env, **kw):
        seen.update(env)
        return subprocess.CompletedProcess(cmd, 0, stdout=f"{C}\n{A}\n", stderr="")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    assert gpu_memory.cuda_order_uuids("PCI_BUS_ID") == [C, A]
    assert "CUDA_VISIBLE_DEVICES" not in seen and seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", ""))
    assert gpu_memory.cuda_order_uuids(None) is None      # no driver: unknown
