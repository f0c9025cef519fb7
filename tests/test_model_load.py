"""Loading a model folder for a cold process (issue 26): the network the model-folder check
builds on the meta device receives the checkpoint's tensors; nothing is initialised at random
first, and the network computes what a network built and copied into would; a plain folder's
plans are read without nnU-Net's heavy plans/label modules, as nnU-Net reads them."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tiny_model import tiny_plans, write_model_folder
from flareseg.nnunet.checkpoint import load_checkpoint, save_checkpoint
from flareseg.nnunet.model import _nnunet_plan_view, build_network, load_model, plan_view, with_weights

REPO = Path(__file__).resolve().parents[1]


def _reference(model_dir, state) -> nn.Module:
    """The network built on the CPU (random init) with the state copied in: the old way."""
    m = load_model(model_dir)
    net = build_network(m.plans, m.dataset_json, m.configuration, m.trainer_name)
    net.load_state_dict(state)
    return net.eval()


def test_loaded_network_holds_the_checkpoint_and_computes_as_a_copied_one(tmp_path):
    md = write_model_folder(tmp_path / "m", plans=tiny_plans(), seed=3)
    state = load_checkpoint(md / "fold_0" / "checkpoint_final.pth")["network_weights"]
    net = load_model(md).networks[0]
    got = net.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in got.values())
    assert not net.training
    x = torch.randn(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(net(x), _reference(md, state)(x))


def test_checkpoint_in_half_precision_loads_as_the_networks_float32(tmp_path):
    md = write_model_folder(tmp_path / "m", plans=tiny_plans(), seed=4)
    path = md / "fold_0" / "checkpoint_final.pth"
    ck = load_checkpoint(path)
    ck["network_weights"] = {k: v.half() if v.is_floating_point() else v for k, v in ck["network_weights"].items()}
    save_checkpoint(ck, path)
    net = load_model(md).networks[0]
    for k, v in net.state_dict().items():
        want = ck["network_weights"][k]
        assert v.dtype == (torch.float32 if want.is_floating_point() else want.dtype)
        assert torch.equal(v, want.to(v.dtype))


class _WithConstant(nn.Module):
    """A network whose constructor sets a buffer that no checkpoint holds (non-persistent)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        self.register_buffer("scale", torch.full((2,), 3.0), persistent=False)


def test_tensors_the_state_does_not_hold_come_from_a_network_built_on_the_cpu():
    state = {"conv.weight": torch.ones(2, 1, 1, 1, 1), "conv.bias": torch.zeros(2)}
    with torch.device("meta"):
        meta = _WithConstant()
    net = with_weights(meta, state, _WithConstant)
    assert torch.equal(net.scale, torch.full((2,), 3.0)) and torch.equal(net.conv.weight, state["conv.weight"])
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()]) and not net.training


def _plain_folder() -> tuple[dict, dict]:
    plans = tiny_plans(transpose_forward=(2, 0, 1))
    labels = {"background": 0, "liver": 1, "spleen": 3, "kidney": 2}
    return plans, {"labels": labels, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}


def _inherits(plans, ds):
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "spacing": [4.0, 3.0, 3.0]}
    return "3d_lowres"


def _ignore_label(plans, ds):
    ds["labels"]["ignore"] = 4
    return "3d_fullres"


def _modality(plans, ds):
    ds["modality"] = ds.pop("channel_names")
    return "3d_fullres"


def _cascade(plans, ds):
    plans["configurations"]["3d_fullres"]["previous_stage"] = "3d_lowres"
    return "3d_fullres"


def _regions(plans, ds):
    ds["labels"]["both"] = [1, 2]
    ds["regions_class_order"] = [1, 3, 2, 4]
    return "3d_fullres"


@pytest.mark.parametrize("edit", [None, _inherits, _ignore_label, _modality, _cascade, _regions])
def test_plan_view_is_nnunets_reading_of_the_plans(edit):
    """Read directly (plain folders) or through nnU-Net's managers (the rest), the view is the one
    nnU-Net's PlansManager/LabelManager give."""
    plans, ds = _plain_folder()
    configuration = edit(plans, ds) if edit else "3d_fullres"
    view = plan_view(copy.deepcopy(plans), copy.deepcopy(ds), configuration)
    assert view == _nnunet_plan_view(copy.deepcopy(plans), copy.deepcopy(ds), configuration)
    if edit is None:
        assert (view.num_classes, view.num_input_channels, view.transpose_forward) == (4, 1, (2, 0, 1))


def test_a_plain_model_folder_loads_without_nnunets_plans_modules(tmp_path):
    """The folder check and the load read a plain folder's plans themselves: nnU-Net's plans and
    label modules (image readers, blosc2, numexpr: ~0.5 s of a cold start) are not imported."""
    md = write_model_folder(tmp_path / "m", plans=tiny_plans(), seed=0)
    code = ("import sys; from flareseg.nnunet.folder_check import check_model_folder; "
            "from flareseg.nnunet.model import load_model; "
            f"check_model_folder({str(md)!r}); load_model({str(md)!r}); "
            "print(sorted(m for m in sys.modules if m.startswith(('nnunetv2.utilities.plans_handling', "
            "'nnunetv2.utilities.label_handling', 'blosc2', 'numexpr', 'torch._dynamo'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
