"""inference.dtype on the CPU: the choice from the CPU's flags, and bf16 autocast labels vs float32's.

The choice is a pure function of the flags (tested for AMX, AVX512-BF16 and plain AVX2 CPUs
without needing one); the bfloat16 runs work on any x86 CPU (emulated without native bf16, slower).
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from flareseg.config import ConfigError, InferenceConfig
from flareseg.evaluation.metrics import dice_per_class
from flareseg.inference.predictor import FastPredictor, choose_dtype, cpu_flags
from flareseg.io import read_array
from tiny_model import fit_model_folder, tiny_plans, write_model_folder

SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
COOPER_LAKE = {"avx2", "avx512f", "avx512_bf16"}
EPYC_ZEN3 = {"avx2", "fma", "f16c"}


@pytest.mark.parametrize("requested, device, flags, want", [
    ("auto", "cpu", SAPPHIRE_RAPIDS, "bfloat16"),
    ("auto", "cpu", COOPER_LAKE, "bfloat16"),
    ("auto", "cpu", EPYC_ZEN3, "float32"),
    ("auto", "cpu", set(), "float32"),            # flags unreadable (not Linux): the safe choice
    ("auto", "cuda", EPYC_ZEN3, "float16"),       # today's GPU behaviour
    ("auto", "cuda", SAPPHIRE_RAPIDS, "float16"),
    ("float16", "cuda", set(), "float16"),
    ("bfloat16", "cuda", set(), "bfloat16"),
    ("float32", "cuda", set(), "float32"),
    ("float16", "cpu", SAPPHIRE_RAPIDS, "float32"),  # no fast CPU float16 kernels
    ("bfloat16", "cpu", EPYC_ZEN3, "bfloat16"),      # asked for: runs, emulated
    ("bfloat16", "cpu", SAPPHIRE_RAPIDS, "bfloat16"),
    ("float32", "cpu", SAPPHIRE_RAPIDS, "float32"),
])
def test_dtype_choice_from_cpu_flags(requested, device, flags, want):
    got, reason = choose_dtype(requested, device, frozenset(flags))
    assert got == want
    assert reason and requested in reason     # the report says what was asked and why this ran
    if requested == "auto" and device == "cpu":
        assert ("amx_bf16" in reason or "avx512_bf16" in reason)
    if requested != want:
        assert want in reason


def test_cpu_flags_read_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                    "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    monkeypatch.delenv("FLARESEG_CPU_FLAGS", raising=False)
    assert {"amx_bf16", "avx512_bf16", "avx2"} <= cpu_flags(str(info))
    assert choose_dtype("auto", "cpu", cpu_flags(str(info)))[0] == "bfloat16"
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
    monkeypatch.setenv("FLARESEG_CPU_FLAGS", "amx_bf16")   # the override wins over the file
    assert cpu_flags(str(info)) == {"amx_bf16"}


def test_dtype_key_accepts_auto_and_refuses_others():
    from flareseg.config import inference_config
    assert InferenceConfig().dtype == "auto"
    assert inference_config(None, "t", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ConfigError, match="dtype"):
        inference_config(None, "t", dtype="int8")


# ------------------------------------------------------------------ bf16 vs float32 labels

def _fit(md, imgs, labs, steps, lr=3e-3):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # fitted weights independent of the core count (see test_predictor)
    try:
        return fit_model_folder(md, imgs, labs, steps=steps, lr=lr)
    finally:
        torch.set_num_threads(threads)


def _agreement(model_dir, img: sitk.Image) -> tuple[dict[int, float], dict, dict]:
    """Per present class Dice of the bfloat16-autocast labels vs float32's, and both runs' stats."""
    out = {}
    for dt in ("float32", "bfloat16"):
        # step 1.0: fewer windows (bf16 is emulated, ~10x slower, on CPUs without native bf16)
        res = FastPredictor(model_dir, device="cpu", dtype=dt, skip_windows=False, step_size=1.0).run(img)
        out[dt] = (sitk.GetArrayFromImage(res.labels), res.stats)
    ref, test = out["float32"][0], out["bfloat16"][0]
    assert len(np.unique(ref)) > 2, "the fitted model must predict several classes"
    return dice_per_class(test, ref), out["float32"][1], out["bfloat16"][1]


def _phantom(shape, seed):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    arr = np.full(shape, -1000.0)
    body = (y / 0.8) ** 2 + (x / 0.85) ** 2 < 1
    arr[body] = 40
    lab = np.zeros(shape, dtype=np.uint8)
    for c, hu, (cz, cy, cx), r in [(1, 120, (0.0, -0.2, -0.3), 0.45), (3, 180, (0.1, 0.25, 0.35), 0.3),
                                   (2, -20, (-0.3, 0.3, -0.2), 0.25)]:
        m = ((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) < r ** 2
        arr[m], lab[m] = hu, c
    return (arr + rng.normal(0, 15, shape)).astype(np.int16), lab


def test_bf16_labels_agree_with_float32_on_a_fitted_phantom_model(tmp_path):
    labels = {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}
    md = write_model_folder(tmp_path / "m", labels=labels, seed=1)
    pairs = [_phantom((24, 64, 56), s) for s in range(2)]
    _fit(md, [p[0] for p in pairs], [p[1] for p in pairs], steps=60)
    ct, _ = _phantom((24, 64, 56), 7)
    img = sitk.GetImageFromArray(ct)
    img.SetSpacing((1.5, 1.5, 2.5))
    dice, s32, s16 = _agreement(md, img)
    assert dice and min(dice.values()) >= 0.99, dice
    assert (s32["dtype"], s16["dtype"]) == ("float32", "bfloat16")   # the stats say what ran


def test_bf16_labels_agree_with_float32_on_real_ct(tmp_path, shared_data):
    """The shared real CT (3 mm; liver, spleen, stomach of its silver-standard organs), a small model
    fitted to it (a briefly fitted model has weak logits: a harder case than a trained one)."""
    path = shared_data / "ct" / "ts_example_ct_sm.nii.gz"
    ct, geo = read_array(path)
    seg, _ = read_array(shared_data / "ct" / "ts_example_ct_sm_seg_flare.nii.gz")
    lab = np.zeros_like(seg, dtype=np.uint8)
    for i, c in enumerate((1, 3, 11), 1):
        lab[seg == c] = i
    plans = tiny_plans(patch_size=(16, 48, 48), spacing=tuple(reversed(geo.spacing)), features=(4, 8, 16))
    md = write_model_folder(tmp_path / "m", plans=plans, labels={0: "background", 1: "liver", 2: "spleen",
                                                                 3: "stomach"}, seed=2)
    _fit(md, [ct], [lab], steps=150, lr=1e-2)
    dice, _, s16 = _agreement(md, sitk.ReadImage(str(path)))
    assert len(dice) >= 2 and min(dice.values()) >= 0.99, dice
    assert s16["dtype"] == "bfloat16" and "bfloat16" in s16["dtype_reason"]
