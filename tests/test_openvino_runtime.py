"""inference.runtime: openvino: the network run by OpenVINO on the CPU gives the torch runtime's labels,
its converted network is cached outside the model folder and verified before it is used, and a
runtime that cannot run here is refused before anything is written.

OpenVINO is an optional extra (``pip install 'flareseg[openvino]'``); ``make venv`` installs it, so
these tests run in CI.  The choice/refusal tests need no OpenVINO.
"""
from __future__ import annotations

import json
import logging
import os
import typing

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from flareseg.cli import main
from flareseg.config import RUNTIMES, ConfigError, InferenceConfig, inference_config
from flareseg.evaluation.metrics import dice_per_class
from flareseg.inference import openvino_runtime as ovr
from flareseg.inference import runtimes
from flareseg.inference.predictor import FastPredictor
from flareseg.nnunet.model import load_model
from tiny_model import fit_model_folder, tiny_plans, write_model_folder
from tests.bad_input import md5_tree, tiny_ct


# ------------------------------------------------------------------ choice and refusal (no OpenVINO needed)

def test_runtime_key_defaults_to_torch_and_refuses_unknown_runtimes():
    assert inference_config().runtime == "torch"
    assert inference_config(None, "t", runtime="openvino").runtime == "openvino"
    with pytest.raises(ConfigError, match="runtime"):
        inference_config(None, "t", runtime="onnx")


def test_runtime_device_and_problems(monkeypatch):
    assert runtimes.runtime_device("openvino", "auto") == "cpu"     # auto + openvino: the CPU, even beside a GPU
    assert runtimes.runtime_device("openvino", "cuda") == "cuda"
    assert runtimes.runtime_device("torch", "auto") == "auto"
    assert runtimes.runtime_problem("torch", "cuda") is None
    why = runtimes.runtime_problem("openvino", "cuda")
    assert "inference.runtime=openvino" in why and "inference.device" in why
    assert "unknown runtime 'onnx'" in runtimes.runtime_problem("onnx", "cpu")
    monkeypatch.setattr(ovr, "openvino_version", lambda: None)
    why = runtimes.runtime_problem("openvino", "cpu")
    assert "not installed" in why and "flareseg[openvino]" in why


def test_one_list_of_runtimes_for_config_table_and_command_line():
    """The config's choices are the table's names; --runtime offers and explains each of them."""
    import argparse
    from flareseg.cli import build_parser
    assert tuple(runtimes.TABLE) == RUNTIMES == typing.get_args(typing.get_type_hints(InferenceConfig)["runtime"])
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flag = next(a for a in commands.choices["predict"]._actions if "--runtime" in a.option_strings)
    assert tuple(flag.choices) == RUNTIMES
    assert all(f"{r.name} = {r.summary}" in flag.help for r in runtimes.TABLE.values())


def test_cache_root_precedence(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert ovr.cache_root({"FLARESEG_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x"}) == ovr.Path("/c")
    assert ovr.cache_root({"XDG_CACHE_HOME": "/x"}) == ovr.Path("/x/flareseg")
    assert ovr.cache_root({"XDG_CACHE_HOME": "", **home}).name == "flareseg"


def test_network_key_follows_weights_structure_and_versions(tmp_path):
    md = write_model_folder(tmp_path / "m", seed=0)
    net = load_model(md).networks[0]
    key = ovr.network_key(net, ("ov1", "t1"))
    assert key == ovr.network_key(load_model(md).networks[0], ("ov1", "t1"))   # same folder, same key
    assert key != ovr.network_key(net, ("ov2", "t1"))
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    assert key != ovr.network_key(net, ("ov1", "t1"))


def test_downsampling_is_the_plans_pooling(tmp_path):
    plans = tiny_plans(patch_size=(16, 32, 32), spacing=(2.5, 1.5, 1.5))
    net = load_model(write_model_folder(tmp_path / "m", plans=plans, seed=0)).networks[0]
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    want = np.prod(np.array(arch["strides"]), axis=0)
    assert ovr.downsampling(net) == tuple(int(v) for v in want)


@pytest.mark.parametrize("argv, reason", [
    (["--runtime", "openvino", "--device", "cuda"], "inference.runtime=openvino"),
    (["--set", "inference.runtime=tensorrt"], "runtime"),
])
def test_predict_refuses_a_runtime_that_cannot_run_before_writing(tmp_path, argv, reason, caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # as on a GPU machine
    md = write_model_folder(tmp_path / "m", seed=0)
    tiny_ct(tmp_path / "a.nii.gz")
    before = md5_tree([tmp_path])
    with caplog.at_level(logging.ERROR):
        rc = main(["predict", "-i", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "out"), "-m", str(md),
                   "-q", *argv])
    assert rc == 2 and reason in caplog.text
    assert md5_tree([tmp_path]) == before and not (tmp_path / "out").exists()


def test_predict_without_openvino_says_how_to_install(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(ovr, "openvino_version", lambda: None)
    md = write_model_folder(tmp_path / "m", seed=0)
    tiny_ct(tmp_path / "a.nii.gz")
    with caplog.at_level(logging.ERROR):
        rc = main(["predict", "-i", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "out"), "-m", str(md),
                   "-q", "--runtime", "openvino"])
    assert rc == 2 and "pip install 'flareseg[openvino]'" in caplog.text
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="not installed"):       # the Python API refuses the same way
        FastPredictor(md, runtime="openvino", device="cpu")


# ------------------------------------------------------------------ with OpenVINO

needs_openvino = pytest.mark.skipif(ovr.openvino_version() is None,
                                    reason="openvino not installed (make venv installs it)")


def _phantom(shape, seed):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    arr = np.full(shape, -1000.0)
    arr[(y / 0.8) ** 2 + (x / 0.85) ** 2 < 1] = 40
    lab = np.zeros(shape, dtype=np.uint8)
    for c, hu, (cz, cy, cx), r in [(1, 120, (0.0, -0.2, -0.3), 0.45), (2, 180, (0.1, 0.25, 0.35), 0.3)]:
        m = ((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) < r ** 2
        arr[m], lab[m] = hu, c
    return (arr + rng.normal(0, 15, shape)).astype(np.int16), lab


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small model fitted to phantoms (random weights give near-tied logits) and a test image."""
    md = write_model_folder(tmp_path_factory.mktemp("ov") / "m",
                            labels={0: "background", 1: "liver", 2: "kidney"}, seed=1)
    pairs = [_phantom((24, 64, 56), s) for s in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit_model_folder(md, [p[0] for p in pairs], [p[1] for p in pairs], steps=60, lr=3e-3)
    finally:
        torch.set_num_threads(threads)
    img = sitk.GetImageFromArray(_phantom((24, 64, 56), 7)[0])
    img.SetSpacing((1.5, 1.5, 2.5))
    return md, img


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLARESEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@needs_openvino
def test_openvino_labels_agree_with_torch(fitted, cache):
    md, img = fitted
    ref = FastPredictor(md, device="cpu", skip_windows=False).run(img)
    before = md5_tree([md])
    res = FastPredictor(md, device="cpu", skip_windows=False, runtime="openvino").run(img)
    a, b = sitk.GetArrayFromImage(ref.labels), sitk.GetArrayFromImage(res.labels)
    assert len(np.unique(a)) > 2, "the fitted model must predict several classes"
    dice = dice_per_class(b, a)
    assert min(dice.values()) >= 0.99, dice
    assert res.labels.GetSize() == img.GetSize() and res.labels.GetSpacing() == img.GetSpacing()
    assert res.stats["windows"] == ref.stats["windows"]
    assert (ref.stats["runtime"], res.stats["runtime"]) == ("torch", "openvino")
    assert md5_tree([md]) == before                          # the model folder is never written to


@needs_openvino
def test_converted_network_is_cached_verified_and_reconverted_when_damaged(fitted, cache, caplog):
    md, img = fitted
    first = FastPredictor(md, device="cpu", runtime="openvino")
    assert first.runtime_model == "converted"
    (folder,) = (cache / "openvino").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["digest.json", "network.bin", "network.xml"]
    assert not [p for p in (cache / "openvino").iterdir() if p.name.startswith(".")]   # no temp folders left
    second = FastPredictor(md, device="cpu", runtime="openvino")
    assert second.runtime_model == "cache"
    want = sitk.GetArrayFromImage(second.predict(img))

    # a truncated weights file is noticed by its digest and converted again, never run
    binf = folder / "network.bin"
    binf.write_bytes(binf.read_bytes()[: binf.stat().st_size // 2])
    assert ovr.verified_ir(folder) is None
    with caplog.at_level(logging.WARNING):
        third = FastPredictor(md, device="cpu", runtime="openvino")
    assert third.runtime_model == "converted" and "converting again" in caplog.text
    assert ovr.verified_ir(folder) is not None
    assert np.array_equal(sitk.GetArrayFromImage(third.predict(img)), want)


@needs_openvino
def test_interrupted_cache_write_leaves_no_temp_folder(fitted, cache, monkeypatch):
    """Ctrl-C while the converted network is being saved: the half-written temp folder is removed
    and nothing is cached; the temp was named like every flareseg write's temp (so a stale one of a
    killed process is recognised as one); the next run converts and caches."""
    from flareseg.temp_names import TEMP_RE
    import openvino as ov
    md, _ = fitted
    seen = []

    def half_save_then_interrupt(model, path, **kw):     # no OpenVINO object is left half-made
        Path(path).write_text("<net")
        seen.append(Path(path).parent.name)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ovr, "_convert", lambda net, in_channels: object())
        m.setattr(ov, "save_model", half_save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            ovr.cached_model(torch.nn.Conv3d(1, 2, 3), 1)
    assert len(seen) == 1 and TEMP_RE.match(seen[0]), seen
    assert list((cache / "openvino").iterdir()) == []
    assert FastPredictor(md, device="cpu", runtime="openvino").runtime_model == "converted"
    (folder,) = (cache / "openvino").iterdir()
    assert ovr.verified_ir(folder) is not None


@needs_openvino
def test_unwritable_cache_still_predicts(fitted, tmp_path, monkeypatch, caplog):
    md, img = fitted
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FLARESEG_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING):
        p = FastPredictor(md, device="cpu", runtime="openvino")
    assert p.runtime_model.startswith("converted, not cached") and "not cached" in caplog.text
    assert sitk.GetArrayFromImage(p.predict(img)).any()


@needs_openvino
@pytest.mark.parametrize("flags, want", [("", "float32"), ("avx2 amx_bf16", "bfloat16")])
def test_openvino_bfloat16_only_where_the_cpu_has_it(fitted, cache, monkeypatch, flags, want):
    """OpenVINO runs a bf16 request as float32 on a CPU without native bf16 (no emulation): the
    predictor says float32 there instead of claiming bf16."""
    monkeypatch.setenv("FLARESEG_CPU_FLAGS", flags)
    p = FastPredictor(fitted[0], device="cpu", runtime="openvino", dtype="bfloat16")
    assert p.dtype_name == want
    if want == "float32":
        assert "OpenVINO runs float32" in p.dtype_reason


@needs_openvino
def test_predict_cli_with_openvino_reports_what_ran(fitted, cache, tmp_path):
    md, img = fitted
    sitk.WriteImage(img, str(tmp_path / "c.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", "-i", str(tmp_path / "c.nii.gz"), "-o", str(out), "-m", str(md), "-q",
                 "--runtime", "openvino"]) == 0
    report = json.loads((out / "predict_report.json").read_text())
    assert report["runtime"] == "openvino" and report["device"] == "cpu"
    assert report["inference"]["runtime"] == "openvino"
    assert report["runtime_model"] in ("converted", "cache")
    assert os.path.exists(out / "c.nii.gz")
