"""FastPredictor against stock nnUNetPredictor on a tiny random-weight model folder; geometry on real files."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from flareseg.evaluation.metrics import dice_per_class
from flareseg.inference.orientation import axial_reorientation
from flareseg.inference.predictor import FastPredictor, body_bbox, model_box
from flareseg.inference.sliding_window import axis_starts, windows_covering
from flareseg.inference.sliding_window import gaussian_importance, predict_sliding_window, window_grid
from flareseg.inference.stock_resampling import export_samples
from flareseg.io import Geometry, InputError, geometry_mismatch
from flareseg.nnunet.model import load_model
from tiny_model import tiny_plans, write_model_folder

LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "tumor"}
SPACING = (2.5, 1.5, 1.5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model"), labels=LABELS, seed=3)


@pytest.fixture(scope="module")
def transposed_model_dir(tmp_path_factory):
    plans = tiny_plans(patch_size=(32, 16, 32), spacing=(1.5, 2.5, 1.5), transpose_forward=(1, 0, 2))
    return write_model_folder(tmp_path_factory.mktemp("model_t"), plans=plans, labels=LABELS, seed=4)


@pytest.fixture(scope="module")
def coarse_model_dir(tmp_path_factory):
    """3 mm isotropic model: few windows on the real files (geometry tests only)."""
    return write_model_folder(tmp_path_factory.mktemp("model_c"), labels=LABELS,
                              plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=5)


def phantom_ct(shape=(20, 48, 40), spacing_zyx=SPACING, seed=0, noise_hu=15.0) -> sitk.Image:
    """Ellipsoid 'body' of soft tissue with brighter blobs in air; int16 HU."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    arr = np.full(shape, -1000, dtype=np.int16)
    arr[(y / 0.8) ** 2 + (x / 0.85) ** 2 < 1] = 40
    arr[((z - 0.2) / 0.5) ** 2 + ((y + 0.2) / 0.3) ** 2 + ((x - 0.1) / 0.35) ** 2 < 1] = 150
    arr[(z / 0.3) ** 2 + ((y - 0.4) / 0.2) ** 2 + ((x + 0.4) / 0.2) ** 2 < 1] = -80
    arr = (arr + rng.normal(0, noise_hu, shape)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    img.SetOrigin((-30.0, 12.0, 100.0))
    img.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    return img


def stock_predict(model_dir, img: sitk.Image, mirroring=False, probabilities=False):
    """Stock nnUNetPredictor's label map of ``img`` turned to the orientation flareseg's import gives
    training data (axial, LPS ascending: what FastPredictor's ``reorient`` feeds the network), in
    ``img``'s array order; with ``probabilities`` also its exported class probabilities ``(K, Z, Y, X)``."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=mirroring, device=torch.device("cpu"),
                           perform_everything_on_device=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    ro = axial_reorientation(img.GetDirection(), canonical=True)
    spacing = list(reversed(img.GetSpacing()))
    arr = np.ascontiguousarray(ro.apply(sitk.GetArrayFromImage(img).astype(np.float32)))[None]
    out = pred.predict_single_npy_array(arr, {"spacing": [spacing[a] for a in ro.perm]}, None, None,
                                        probabilities)
    if probabilities:
        return np.ascontiguousarray(ro.undo(out[0])), np.ascontiguousarray(ro.undo(out[1], lead=1))
    return np.ascontiguousarray(ro.undo(out))


def test_load_model_reads_plans_and_checkpoint(model_dir):
    m = load_model(model_dir)
    assert m.patch_size == (16, 32, 32) and m.spacing == SPACING
    assert m.num_classes == 4 and m.labels["tumor"] == 3 and m.folds == ["0"]
    assert m.mirror_axes == (0, 1, 2) and m.trainer_name == "nnUNetTrainer"
    assert m.intensity_properties[0]["percentile_99_5"] == 1200.0
    assert not m.networks[0].training
    out = m.networks[0](torch.zeros(1, 1, *m.patch_size))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, *m.patch_size)  # no deep supervision


def test_stock_predictor_loads_the_fixture_folder(model_dir):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    pred = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    ours = load_model(model_dir).networks[0].state_dict()
    for k, v in pred.network.state_dict().items():
        assert torch.equal(v, ours[k])


def test_logits_match_stock_sliding_window(model_dir):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                           perform_everything_on_device=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    x = torch.randn((1, 22, 45, 39), generator=torch.Generator().manual_seed(0))
    ref = pred.predict_sliding_window_return_logits(x).float()
    fp = FastPredictor(model_dir, device="cpu")
    ours, _ = predict_sliding_window(x, fp.window_fn(), fp.model.patch_size, 0.5, 3, return_logits=True)
    # stock accumulates in float16 even on the CPU: where the summed Gaussian weight is subnormal
    # in float16 (corners of the volume, ~2% here) its logits are quantised; compare elsewhere
    weight = torch.zeros(x.shape[1:])
    g = gaussian_importance(fp.model.patch_size)
    for pl in window_grid(x.shape[1:], fp.model.patch_size, 0.5):
        for z, y, xx in pl.windows():
            weight[z:z + 16, y:y + 32, xx:xx + 32] += g
    ok = weight > 1e-3
    assert ok.float().mean() > 0.7
    assert torch.allclose(ours[:, ok], ref[:, ok], atol=2e-2, rtol=1e-2)
    assert (ours.argmax(0) == ref.argmax(0)).float().mean() > 0.99


class _RoundOutput(torch.nn.Module):
    """The network with its logits rounded to ``dtype``: what CUDA autocast hands back."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).to(self.dtype)


@pytest.mark.parametrize("half_logits", [False, True])   # network in float32 (CPU) / float16 (CUDA autocast)
def test_float16_sliding_window_is_stocks_bit_for_bit(model_dir, half_logits):
    """The float16 path sums as stock does (its float16 Gaussian with subnormal tails, products in
    the logits' type, float16 sums in window order, float16 quotient): given the same window logits
    (one window per batch: a batch of several changes the network's float32 rounding), every logit
    is stock's, bit for bit, subnormal edges included."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                           perform_everything_on_device=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    fp = FastPredictor(model_dir, device="cpu")
    if half_logits:
        pred.network = _RoundOutput(pred.network, torch.float16)
        fp.networks = [_RoundOutput(n, torch.float16) for n in fp.networks]
    x = torch.randn((1, 22, 45, 39), generator=torch.Generator().manual_seed(0))
    ref = pred.predict_sliding_window_return_logits(x)
    ours, _ = predict_sliding_window(x, fp.window_fn(), fp.model.patch_size, 0.5, 1, return_logits=True,
                                     dtype=torch.float16)
    assert ref.dtype == ours.dtype == torch.float16
    assert torch.equal(ours, ref)
    labels, _ = predict_sliding_window(x, fp.window_fn(), fp.model.patch_size, 0.5, 1, dtype=torch.float16)
    assert torch.equal(labels, ref.argmax(0).to(torch.uint8))   # the argmax of the float16 quotient


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_paths_within_rounding_bound_of_float32(model_dir, dtype):
    """The float16 path (stock's sums, network logits in float16 as under CUDA autocast) and the
    bfloat16 path (bfloat16 logits, float32 sums) against float32: every logit within
    :func:`rounding_bound` of the float32 path where float16 sums stay normal, so every label the
    model decides by more than that is the same."""
    fp = FastPredictor(model_dir, device="cpu")
    nets = [_LogitRange(n) for n in fp.networks]
    fp.networks = nets
    patch = fp.model.patch_size
    x = torch.randn((1, 26, 70, 61), generator=torch.Generator().manual_seed(1))
    ref, _ = predict_sliding_window(x, fp.window_fn(), patch, 0.5, 3, return_logits=True)
    fp.networks = [_RoundOutput(n, dtype) for n in nets]
    half, _ = predict_sliding_window(x, fp.window_fn(), patch, 0.5, 3, return_logits=True, dtype=dtype)
    labels, _ = predict_sliding_window(x, fp.window_fn(), patch, 0.5, 3, dtype=dtype)
    weight, count = summed_weight(x.shape[1:], patch, 0.5)
    n, m = float(count.max()), max(n.largest for n in nets)
    if dtype == torch.float16:
        assert half.dtype == torch.float16
        d, ok = rounding_bound(n, m, U16, out_unit=U16), weight >= W16_FLOOR
    else:
        assert half.dtype == torch.float32   # bfloat16 would lose the sums
        d, ok = rounding_bound(n, m, U32, out_unit=UBF16), torch.ones_like(weight, dtype=torch.bool)
    d += rounding_bound(n, m, U32)           # the float32 path's own rounding
    assert ok.float().mean() > 0.7
    err = (half.float() - ref).abs().amax(0)
    assert float(err[ok].max()) <= d, (float(err[ok].max()), d)
    top2 = ref.sort(0).values[-2:]
    decided = ok & (top2[1] - top2[0] > 2 * d)
    assert decided.float().mean() > 0.05   # a random-weight model decides few voxels clearly
    assert torch.equal(labels[decided], ref.argmax(0).to(torch.uint8)[decided])
    assert int((labels != ref.argmax(0).to(torch.uint8)).sum()) < 0.05 * labels.numel()


def test_float16_labels_are_stocks_at_model_spacing(model_dir):
    """``--no-skip`` with the GPU default dtype (float16; the constructor keeps CPU runs in float32,
    so it is set here) gives stock's labels on every voxel (stock sums in float16 on the CPU too)."""
    img = phantom_ct(spacing_zyx=SPACING, seed=3)
    ref = stock_predict(model_dir, img)
    fp = FastPredictor(model_dir, device="cpu", skip_windows=False, crop_to_body=False, batch_windows=1)
    fp.dtype = torch.float16
    ours = sitk.GetArrayFromImage(fp.predict(img))
    assert np.array_equal(ours, ref), int((ours != ref).sum())


def test_end_to_end_equals_stock_at_model_spacing(model_dir):
    img = phantom_ct(spacing_zyx=SPACING)
    ref = stock_predict(model_dir, img)
    ours = sitk.GetArrayFromImage(FastPredictor(model_dir, device="cpu", skip_windows=False,
                                                crop_to_body=False).predict(img))
    assert ours.shape == ref.shape
    assert (ours == ref).mean() > 0.995


def test_transpose_forward_handled_like_stock(transposed_model_dir):
    img = phantom_ct(shape=(32, 20, 40), spacing_zyx=(2.5, 1.5, 1.5))  # transposed: (1.5, 2.5, 1.5)
    ref = stock_predict(transposed_model_dir, img)
    fp = FastPredictor(transposed_model_dir, device="cpu", skip_windows=False, crop_to_body=False)
    ours = sitk.GetArrayFromImage(fp.predict(img))
    assert fp.last_stats["shape_model"] == [20, 32, 40]
    assert (ours == ref).mean() > 0.995


def test_mirroring_tta_matches_stock(model_dir):
    img = phantom_ct(spacing_zyx=SPACING, seed=1)
    ref = stock_predict(model_dir, img, mirroring=True)
    ours = sitk.GetArrayFromImage(FastPredictor(model_dir, device="cpu", skip_windows=False, tta=True,
                                                crop_to_body=False).predict(img))
    assert (ours == ref).mean() > 0.995


@pytest.fixture(scope="module")
def fitted_model_dir(tmp_path_factory):
    """Random weights give white-noise argmax maps, so the tiny model is first fitted to phantoms."""
    from tiny_model import fit_model_folder
    md = write_model_folder(tmp_path_factory.mktemp("fitted"), labels=LABELS, seed=3)
    imgs = [sitk.GetArrayFromImage(phantom_ct(shape=(24, 64, 56), seed=s)) for s in range(2)]
    labs = [(i > 100).astype(int) + 2 * ((i < -50) & (i > -300)).astype(int) for i in imgs]
    # fit_model_folder trains on one torch thread: the weights do not vary with the core count
    return fit_model_folder(md, imgs, labs, steps=200)


@pytest.mark.slow
def test_resampled_prediction_agrees_with_stock(fitted_model_dir):
    """Input at 2.0 x 1.1 x 1.1 mm: stock resamples with splines on the CPU, we trilinear on device."""
    img = phantom_ct(shape=(24, 64, 56), spacing_zyx=(2.0, 1.1, 1.1), seed=5)
    ref = stock_predict(fitted_model_dir, img)
    ours = sitk.GetArrayFromImage(FastPredictor(fitted_model_dir, device="cpu", skip_windows=False,
                                                crop_to_body=False).predict(img))
    d = dice_per_class(ours, ref)
    assert (ours == ref).mean() > 0.93, d
    assert max(d.values()) > 0.8, d


#: float16's unit roundoff and the summed-weight floor of :func:`stock_determined` (twice float16's
#: smallest normal number, so every subnormal rounding step, <= 2**-24, is at most U16 * weight);
#: bfloat16's and float32's unit roundoff
U16, W16_FLOOR = 2.0 ** -11, 2.0 ** -13
UBF16, U32 = 2.0 ** -8, 2.0 ** -24


def summed_weight(shape, patch, step_size):
    """Per voxel of a ``shape`` volume: the exact summed Gaussian weight of stock's windows and
    their number."""
    g = gaussian_importance(patch)
    weight, count = torch.zeros(shape), torch.zeros(shape)
    for pl in window_grid(shape, patch, step_size):
        for z, y, x in pl.windows():
            s = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
            weight[s] += g
            count[s] += 1
    return weight, count


def rounding_bound(n: float, logit_max: float, unit: float = U16, out_unit: float = 0.0) -> float:
    """How far a Gaussian-weighted mean of ``n`` window logits (each at most ``logit_max`` in
    magnitude) can land from the exact one when the window logits are rounded to ``out_unit``
    (the network's output type) and the Gaussian, the sums, the quotient and the exported logits
    to ``unit`` (:func:`stock_determined` derives the terms)."""
    return out_unit * logit_max + unit * ((5 * n + 4) * logit_max + n)


class _LogitRange(torch.nn.Module):
    """A network that records the largest |logit| it has returned (``M`` of :func:`stock_determined`)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.largest = net, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        self.largest = max(self.largest, float(y.abs().max()))
        return y


def stock_determined(fp: FastPredictor, img: sitk.Image, stock_probs: np.ndarray, logit_max: float
                     ) -> np.ndarray:
    """Input voxels whose stock label the model decides, not stock's float16 arithmetic.

    Stock nnU-Net sums the Gaussian-weighted window logits and the weights in float16 (on the CPU
    too), with a float16 Gaussian, and exports float16 logits.  Where a voxel's summed weight ``W``
    is subnormal in float16 (the volume's edges and corners, reached only by window tails: ~13% of
    these tiny volumes) its logits are quantised to a few steps and its label is arbitrary; ours
    (float32) follow the model there.  Elsewhere (``W >= W16_FLOOR`` at every model voxel the
    export reads), with ``n`` windows over a voxel and window logits at most ``M`` in magnitude,
    every rounding costs at most ``U16`` relative (a subnormal step <= ``U16 * W``): summing
    logits and weights and dividing ``(3n + 1) M + n``, the float16 Gaussian ``2 (n + 1) M``, the
    float16 export ``M``, so stock's logit is within ``d = U16 ((5n + 4) M + n)`` of the exact
    Gaussian mean that we compute.  The labels must then agree wherever stock's two largest
    logits (log-probabilities) differ by more than ``2 d``."""
    shape_model, patch = fp.last_stats["shape_model"], fp.model.patch_size
    weight, count = summed_weight(shape_model, patch, fp.cfg.step_size)
    assert fp.model.transpose_forward == (0, 1, 2) and fp.last_stats["reoriented"] is None
    spacing = tuple(float(s) for s in reversed(img.GetSpacing()))
    samples = export_samples(shape_model, img.GetSize()[::-1],
                             *fp._stock_axis_rule("probabilities", fp.model.spacing, spacing))
    for a, smp in enumerate(samples):       # the smallest weight among the corners each voxel reads
        weight = torch.minimum(weight.index_select(a, smp.i0), weight.index_select(a, smp.i1))
    d = rounding_bound(float(count.max()), logit_max)
    top2 = np.sort(np.log(np.clip(stock_probs.astype(np.float64), 1e-300, None)), 0)[-2:]
    return (weight.numpy() >= W16_FLOOR) & (top2[1] - top2[0] > 2 * d)


@pytest.mark.slow
@pytest.mark.parametrize("spacing", [(2.0, 1.1, 1.1), (4.8, 1.1, 1.1)])  # isotropic rule / separate z
def test_default_path_reproduces_stock_labels(fitted_model_dir, spacing):
    """Stock's label export and B-spline image resampling (both the default) each bring us closer to
    stock; with the default B-spline or nnU-Net's own image resampling (crop on: here every window
    meets the body box) the labels are stock's on every voxel stock's float16 sums decide
    (:func:`stock_determined`), whatever the model (the fitted fixture's weights depend on the
    CPU's thread count)."""
    img = phantom_ct(shape=(24, 64, 56) if spacing[0] < 3 else (10, 64, 56), spacing_zyx=spacing, seed=5)
    ref, stock_probs = stock_predict(fitted_model_dir, img, probabilities=True)
    kw = dict(device="cpu", skip_windows=False, crop_to_body=False)
    nearest = sitk.GetArrayFromImage(FastPredictor(fitted_model_dir, image_resampling="linear",
                                                   resample_probabilities=False, **kw).predict(img))
    linear = sitk.GetArrayFromImage(FastPredictor(fitted_model_dir, image_resampling="linear", chunk_mb=0.1,
                                                  **kw).predict(img))
    default = sitk.GetArrayFromImage(FastPredictor(fitted_model_dir, **kw).predict(img))
    agree = {n: float((a == ref).mean()) for n, a in
             [("nearest", nearest), ("linear", linear), ("default", default)]}
    assert agree["nearest"] < agree["linear"] < agree["default"], agree
    assert agree["linear"] > 0.98, agree   # interpolation differs from stock at the edges only
    # --image-resampling nnunet: the plans' own nnU-Net image resampling, with the body crop
    fp = FastPredictor(fitted_model_dir, device="cpu", skip_windows=False, image_resampling="nnunet")
    fp.networks = [_LogitRange(n) for n in fp.networks]
    exact = sitk.GetArrayFromImage(fp.predict(img))
    decided = stock_determined(fp, img, stock_probs, max(n.largest for n in fp.networks))
    assert decided.mean() > 0.7, decided.mean()   # the claim covers most of the volume
    for name, labels in [("nnunet, crop", exact), ("bspline, no crop", default)]:
        wrong = decided & (labels != ref)
        assert not wrong.any(), (name, int(wrong.sum()), dice_per_class(labels, ref))


def test_stock_resampling_mode_is_exact_at_model_spacing(model_dir):
    """No resampling needed: every image resampling and label export gives the same labels."""
    img = phantom_ct(spacing_zyx=SPACING)
    kw = dict(device="cpu", skip_windows=False, crop_to_body=False)
    a = sitk.GetArrayFromImage(FastPredictor(model_dir, **kw).predict(img))
    b = sitk.GetArrayFromImage(FastPredictor(model_dir, image_resampling="linear", **kw).predict(img))
    c = sitk.GetArrayFromImage(FastPredictor(model_dir, resample_probabilities=False, **kw).predict(img))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    with pytest.raises(ValueError, match="image_resampling"):
        FastPredictor(model_dir, device="cpu", image_resampling="spline")


@pytest.mark.parametrize("kw, key, why", [
    (dict(skip=False), "inference.skip", "unknown key"),          # the old keyword names are gone
    (dict(grow=False), "inference.grow", "unknown key"),
    (dict(step_size=0.0), "inference.step_size", "out of range"),
    (dict(batch_windows=2.5), "inference.batch_windows", "expects an integer"),
    (dict(dtype="float64"), "inference.dtype", "expects one of"),
])
def test_settings_are_the_config_keys_checked_like_a_config_file(kw, key, why):
    """FastPredictor's settings are InferenceConfig's own keys, checked before any model loads (the
    model path here does not exist)."""
    from flareseg.config import ConfigError
    with pytest.raises(ConfigError, match=f"'{key}'.*{why}|{why}.*'{key}'"):
        FastPredictor("/nonexistent/model", **kw)


def test_settings_come_from_the_config():
    from flareseg.config import InferenceConfig, inference_config
    cfg = InferenceConfig(step_size=0.75, tta=True, device="cpu")
    assert inference_config(cfg, skip_grow=False) == InferenceConfig(step_size=0.75, tta=True, device="cpu",
                                                                      skip_grow=False)
    assert inference_config() == InferenceConfig()


def test_crop_runs_a_subset_of_stocks_windows():
    """The body crop keeps stock's window grid over the whole image: the windows meeting the box,
    their region, and starts relative to it; an axis no longer than a patch stays whole."""
    shape, patch = (40, 100, 30), (16, 32, 32)
    every_y = axis_starts(100, 32, 0.5)                     # [0, 17, 34, 51, 68] (5 windows)
    region, starts = windows_covering(shape, patch, 0.5, (slice(0, 40), slice(40, 60), slice(0, 30)))
    kept = [s for s in every_y if s < 60 and s + 32 > 40]
    assert region[1] == slice(kept[0], kept[-1] + 32) and starts[1] == [s - kept[0] for s in kept]
    assert region[0] == slice(0, 40) and starts[0] == axis_starts(40, 16, 0.5)
    assert region[2] == slice(0, 30) and starts[2] == [0]   # shorter than the patch: padded, whole
    assert model_box((slice(10, 30),), (100,), (50,)) == (slice(5, 15),)
    assert model_box((slice(3, 7),), (10,), (4,)) == (slice(1, 3),)


def test_output_has_input_geometry_and_probabilities(model_dir):
    img = phantom_ct(shape=(18, 40, 50), spacing_zyx=SPACING)  # model spacing: no interpolation
    res = FastPredictor(model_dir, device="cpu").run(img, save_probabilities=True)
    assert geometry_mismatch(Geometry.of(res.labels), Geometry.of(img)) == []
    lab = sitk.GetArrayFromImage(res.labels)
    assert lab.dtype == np.uint8 and res.probabilities.shape == (4, *lab.shape)
    assert np.allclose(res.probabilities.astype(np.float32).sum(0), 1, atol=2e-2)
    assert (res.probabilities.argmax(0) == lab).mean() > 0.99
    assert {"read", "sliding_window", "export", "total"} <= set(res.stats["seconds"])
    w = res.stats["windows"]
    assert w["windows_run"] + w["windows_skipped"] == w["windows_total"]


def test_probabilities_on_a_resampled_grid_match_the_labels(model_dir):
    """Probabilities are exported as stock does (logits linearly to the input grid, stock's rule
    for the coarse axis, then softmax): on a resampled, cropped case they sum to 1 and their argmax
    is the label map; small slabs give the same result."""
    img = phantom_ct(shape=(10, 60, 56), spacing_zyx=(4.8, 0.9, 0.9), seed=2)
    res = FastPredictor(model_dir, device="cpu").run(img, save_probabilities=True)
    lab = sitk.GetArrayFromImage(res.labels)
    p = res.probabilities.astype(np.float32)
    assert p.shape == (4, *lab.shape) and np.allclose(p.sum(0), 1, atol=2e-2)
    assert (p.argmax(0) == lab).mean() > 0.999            # float16 rounding at near-ties only
    small = FastPredictor(model_dir, device="cpu", chunk_mb=0.01).run(img, save_probabilities=True)
    assert np.array_equal(small.probabilities, res.probabilities)


def test_crop_to_body_leaves_air_background(model_dir):
    img = phantom_ct(shape=(16, 40, 40))
    arr = np.full((16, 160, 72), -1000, dtype=np.int16)
    arr[:, 60:100, 16:56] = sitk.GetArrayFromImage(img)
    big = sitk.GetImageFromArray(arr)
    big.SetSpacing(img.GetSpacing())
    bb = body_bbox(arr, SPACING[::-1][::-1], margin_mm=3.0)
    assert bb[1].start >= 50 and bb[1].stop <= 110 and bb[2].start >= 6 and bb[2].stop <= 66
    fp = FastPredictor(model_dir, device="cpu", crop_to_body=True, body_margin_mm=3.0)
    lab = sitk.GetArrayFromImage(fp.predict(big))
    (y0, y1) = fp.last_stats["crop"][1]
    assert 0 < y0 <= bb[1].start and bb[1].stop <= y1 < 160      # the windows around the body ran
    assert fp.last_stats["windows"]["windows_total"] < \
        FastPredictor(model_dir, device="cpu", crop_to_body=False).run(big).stats["windows"]["windows_total"]
    assert lab[:, :y0].max() == 0 and lab[:, y1:].max() == 0


@pytest.mark.parametrize("spacing", [SPACING, (4.8, 0.9, 0.9)])   # at model spacing / resampled (separate z)
def test_crop_to_body_keeps_stocks_labels_on_the_body(model_dir, spacing):
    """Cropping runs only stock's windows that meet the body: on the body, where exactly those
    windows overlap, our labels are stock's (random-weight model: every voxel counts)."""
    img = phantom_ct(shape=(16, 40, 40), spacing_zyx=spacing)
    # 157 rows: stock's window starts are not evenly spaced integers, so a grid recomputed on the
    # crop would differ from stock's (62 vs 63 here at the model spacing)
    arr = np.full((16, 157, 72), -1000, dtype=np.int16)
    arr[:, 57:97, 16:56] = sitk.GetArrayFromImage(img)
    big = sitk.GetImageFromArray(arr)
    big.SetSpacing(img.GetSpacing())
    ref = stock_predict(model_dir, big)
    fp = FastPredictor(model_dir, device="cpu", skip_windows=False, body_margin_mm=3.0)
    ours = sitk.GetArrayFromImage(fp.predict(big))
    assert fp.last_stats["crop"][1] != [0, 157]                     # the crop dropped windows
    bb = body_bbox(arr, tuple(reversed(big.GetSpacing())), margin_mm=3.0)
    inner = tuple(slice(b.start + 2, b.stop - 2) for b in bb)
    assert (ours[inner] == ref[inner]).mean() > 0.999


@pytest.mark.parametrize("what", ["nan", "constant", "spacing"])
def test_bad_input_raises_input_error(model_dir, what):
    arr = sitk.GetArrayFromImage(phantom_ct()).astype(np.float32)
    spacing = (1.5, 1.5, 2.5)
    if what == "nan":
        arr[3, 4, 5] = np.nan
    elif what == "constant":
        arr[:] = 7
    else:
        spacing = (1.5, 1.5, 80.0)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    with pytest.raises(InputError):
        FastPredictor(model_dir, device="cpu").predict(img)


def test_real_nifti_geometry_roundtrip(coarse_model_dir, shared_data):
    path = shared_data / "ct" / "ts_example_ct_sm.nii.gz"
    fp = FastPredictor(coarse_model_dir, device="cpu")
    out = fp.predict(path)
    ref = Geometry.of(sitk.ReadImage(str(path)))
    assert geometry_mismatch(Geometry.of(out), ref) == []
    assert out.GetDirection() == ref.direction


def test_real_dicom_geometry_roundtrip(coarse_model_dir, shared_data):
    from flareseg.io import read_image
    d = shared_data / "ct" / "ts_example_ct_dicom"
    out = FastPredictor(coarse_model_dir, device="cpu").predict(d)
    assert geometry_mismatch(Geometry.of(out), Geometry.of(read_image(d))) == []


@pytest.mark.parametrize("perm", [(2, 1, 0), (1, 2, 0)])
@pytest.mark.parametrize("which", ["plain", "transposed"])
def test_permuted_storage_predicts_the_same_physical_labels(model_dir, transposed_model_dir, perm, which):
    """The same physical volume stored with permuted axes (anisotropic spacing, flipped direction):
    identical labels and probabilities after mapping back, and the output on the stored grid."""
    md = model_dir if which == "plain" else transposed_model_dir
    axial = phantom_ct(shape=(20, 40, 36), spacing_zyx=(2.5, 1.5, 1.2), seed=2)
    stored = sitk.PermuteAxes(axial, [2 - perm[2 - i] for i in range(3)])  # array: axial.transpose(perm)
    assert np.array_equal(sitk.GetArrayFromImage(stored), sitk.GetArrayFromImage(axial).transpose(perm))
    fp = FastPredictor(md, device="cpu")
    ref = fp.run(axial, save_probabilities=True)
    assert fp.last_stats["reoriented"] is None
    res = fp.run(stored, save_probabilities=True)
    assert res.stats["reoriented"] == np.argsort(perm).tolist()  # undoes the storage permutation
    assert geometry_mismatch(Geometry.of(res.labels), Geometry.of(stored)) == []
    assert res.labels.GetSize() == stored.GetSize() and res.labels.GetSpacing() == stored.GetSpacing()
    assert res.labels.GetOrigin() == stored.GetOrigin() and res.labels.GetDirection() == stored.GetDirection()
    lab_ref = sitk.GetArrayFromImage(ref.labels)
    assert len(np.unique(lab_ref)) > 1
    assert np.array_equal(sitk.GetArrayFromImage(res.labels), lab_ref.transpose(perm))
    assert np.array_equal(res.probabilities, ref.probabilities.transpose(0, *[a + 1 for a in perm]))
    # without reorientation the network sees the volume rotated: different labels in physical space
    raw = FastPredictor(md, device="cpu", reorient=False).predict(stored)
    assert (sitk.GetArrayFromImage(raw) != lab_ref.transpose(perm)).mean() > 0.05


def test_plain_architecture_trainers_build_the_network_like_stock():
    """build_network skips importing these trainers; that is only right while none overrides
    build_network_architecture."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from flareseg.nnunet.model import PLAIN_ARCHITECTURE_TRAINERS, trainer_class
    for name in PLAIN_ARCHITECTURE_TRAINERS:
        assert trainer_class(name).build_network_architecture is nnUNetTrainer.build_network_architecture, name


def test_predictor_reads_its_settings_from_its_config(tmp_path):
    """One place for the settings: the predictor keeps no copy of a config field (what it derives
    on this machine, device and dtype, are the resolved objects, not the setting)."""
    from dataclasses import fields
    from flareseg.config import InferenceConfig
    p = FastPredictor(write_model_folder(tmp_path / "m", seed=0), device="cpu", step_size=0.7, batch_windows=0)
    copied = set(vars(p)) & {f.name for f in fields(InferenceConfig)}
    assert copied <= {"device", "dtype"} and p.cfg.step_size == 0.7
    assert (p.runtime, p.batch_windows) == ("torch", 1)     # auto: one window per call on a CPU


@pytest.mark.parametrize("flips", [(1, -1, 1), (-1, 1, -1), (-1, -1, -1)])
def test_every_stored_flip_is_predicted_in_the_training_orientation(model_dir, flips):
    """``reorient`` (the default) feeds the network the array turned to LPS ascending, the orientation
    import gives training data: a scan stored with any flips gets the labels of the same scan stored
    canonically, voxel for voxel at the same physical points (a random-weight model is not mirror
    symmetric, so without the flip the labels differ)."""
    canon = phantom_ct(seed=4)
    canon.SetDirection((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    arr = sitk.GetArrayFromImage(canon)
    axes = tuple(2 - i for i, f in enumerate(flips) if f < 0)      # index axis i = array axis 2 - i
    stored = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(arr, axes)))
    stored.SetSpacing(canon.GetSpacing())
    stored.SetDirection(tuple(np.diag(np.asarray(flips, dtype=float)).ravel()))
    last = [n - 1 if f < 0 else 0 for n, f in zip(canon.GetSize(), flips)]
    stored.SetOrigin(canon.TransformIndexToPhysicalPoint(last))
    kw = dict(device="cpu", skip_windows=False, crop_to_body=False)
    ref = sitk.GetArrayFromImage(FastPredictor(model_dir, **kw).predict(canon))
    fp = FastPredictor(model_dir, **kw)
    ours = fp.predict(stored)
    assert fp.last_stats["flipped"] == sorted(axes)
    assert ours.GetDirection() == stored.GetDirection() and ours.GetOrigin() == stored.GetOrigin()
    np.testing.assert_array_equal(np.flip(sitk.GetArrayFromImage(ours), axes), ref)
    kept = sitk.GetArrayFromImage(FastPredictor(model_dir, reorient=False, **kw).predict(stored))
    assert not np.array_equal(np.flip(kept, axes), ref)
