"""Fast predictor: an nnU-Net v2 model folder applied on the device, label map out.

Pipeline per case: read → upload the raw array (int16 stays int16) → plans normalisation →
resampling to the model spacing as stock nnU-Net does it (order-3 B-spline, nearest along a
separately resampled coarse axis) but on the device → (optional) crop to the body: of stock's
sliding-window grid over the whole image only the windows that meet the body's bounding box run
(:func:`flareseg.inference.sliding_window.windows_covering`), so each window sees exactly what it
sees in stock nnU-Net → Gaussian sliding window in autocast with window skipping → label map on the
input grid as stock exports it (logits interpolated linearly, nearest along a separately resampled
coarse axis, then argmax), computed only at label boundaries so no class-score map exists at the
input resolution (:func:`flareseg.inference.stock_resampling.argmax_of_interpolation`); input voxels
outside the windows that ran are background → download → image with the input's exact geometry.
An array whose axes are not in axial layout (sagittal/coronal storage,
KiTS-style ``(slices, H, W)`` with a permuted direction matrix) is first permuted into it
(:mod:`flareseg.inference.orientation`; flips and obliquity are kept as stored), then transposed by
the plans' ``transpose_forward``; labels and probabilities are permuted back at the end, and the
input's size, spacing, origin and direction are copied over unchanged.

With ``--no-skip`` the labels are therefore stock ``nnUNetPredictor``'s (same model, no mirroring)
wherever stock's own float16 arithmetic decides them: stock sums the Gaussian-weighted logits and
the weights in float16 (on the CPU too) and exports float16 logits, so (1) where a voxel's summed
Gaussian weight is subnormal in float16 (the volume's edges and corners, reached only by the tails
of windows) stock's logits are quantised to a few steps and its label there is arbitrary, while
ours (float32 on the CPU) follow the model; (2) at near-ties, within float16 rounding of the
logits, either label can come out.  Elsewhere (with the body crop: inside the windows that ran)
the labels agree with either the ``bspline`` or the ``nnunet`` image resampling
(tests/test_predictor.py derives that set of voxels from float16's rounding and checks every one);
reproducing (1) would mean copying stock's loss of the model's output.  With ``dtype="float16"``
(the GPU default) the sliding window does reproduce it: the same float16 Gaussian and float16 sums
in stock's order (:func:`flareseg.inference.sliding_window.predict_sliding_window`), so given the
same window logits every model-grid logit is stock's bit for bit (tests/test_predictor.py, one
window per batch; batches of several, or another cuDNN algorithm, change the network's own
rounding, i.e. labels only at float16 near-ties).  ``bfloat16`` runs the network in bfloat16 and
sums in float32 (on a CPU: the ``auto`` choice where the CPU has AMX/AVX512-BF16,
:func:`choose_dtype`).  ``cfg.runtime`` picks what runs the network from the runtime table
(:mod:`flareseg.inference.runtimes`): torch, or e.g. ``"openvino"``, the same float32 network in
OpenVINO on the CPU (:mod:`flareseg.inference.openvino_runtime`; the rest of the pipeline is
unchanged).
Other modes: ``image_resampling="linear"`` (trilinear; fastest on a CPU, labels differ from stock's
at boundaries), ``"nnunet"`` (the plans' own nnU-Net function on the CPU: the reference the device
B-spline is tested against); ``resample_probabilities=False`` exports the labels nearest-neighbour
(the argmax at model resolution, blockier; kept for comparisons).  See
:mod:`flareseg.inference.stock_resampling`.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from flareseg.anatomy import bbox_of, body_mask, expand_bbox
from flareseg.config import InferenceConfig, inference_config
from flareseg.devices import BF16_CPU_FLAGS, cpu_flags
from flareseg.io import InputError, read_image
from flareseg.image_check import (constant_problem, ct_plausibility_problem, nonfinite_count, nonfinite_problem, shape_problem,
                                  spacing_problem)
from flareseg.inference.normalize import normalize_
from flareseg.inference.runtimes import resolve_runtime, runtime as runtime_entry
from flareseg.inference.orientation import axial_reorientation
from flareseg.inference.resample import resample_image, target_shape
from flareseg.inference.sliding_window import predict_sliding_window, windows_covering
from flareseg.inference.stock_resampling import (AxisSamples, argmax_of_interpolation, export_samples,
                                                 interpolate, resample_image_bspline, separate_axis,
                                                 take_nearest)
from flareseg.nnunet.model import LoadedModel, load_model, nnunet_image_resampler

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
def choose_dtype(requested: str, device_type: str, flags: frozenset[str] | set[str]) -> tuple[str, str]:
    """The network precision that runs for ``inference.dtype = requested`` on ``device_type``
    (``"cuda"``/``"cpu"``) with CPU feature ``flags``: ``(dtype name, reason)``.

    CUDA: ``auto`` is float16 (stock nnU-Net's autocast), anything else as asked.  CPU: ``auto`` is
    bfloat16 autocast when the CPU has native bf16 (:data:`BF16_CPU_FLAGS`), else float32 (bf16 is
    emulated there and slower than float32); ``bfloat16`` runs as asked; ``float16`` runs float32
    (CPU float16 convolutions have no fast kernels)."""
    if device_type != "cpu":
        if requested == "auto":
            return "float16", f"auto: float16 autocast on {device_type}"
        return requested, f"inference.dtype={requested}"
    native = [f for f in BF16_CPU_FLAGS if f in flags]
    if requested == "auto":
        if native:
            return "bfloat16", f"auto: the CPU has {'/'.join(native)}, bfloat16 autocast"
        return "float32", "auto: the CPU has no amx_bf16/avx512_bf16, float32 (bfloat16 would be emulated, slower)"
    if requested == "float16":
        return "float32", "inference.dtype=float16 is CUDA-only (no fast float16 kernels on a CPU): float32"
    if requested == "bfloat16" and not native:
        return "bfloat16", "inference.dtype=bfloat16 (the CPU has no native bf16: emulated, slower than float32)"
    return requested, f"inference.dtype={requested}"


@dataclass
class Prediction:
    """A predicted case: label image (input geometry), optional probabilities, statistics."""

    labels: sitk.Image
    probabilities: np.ndarray | None = None   # (K, Z, Y, X) float16, input array order
    stats: dict[str, Any] = field(default_factory=dict)
    hook_result: Any = None
    image: sitk.Image | None = None           # the CT as read (verified), for HU statistics and previews


def body_bbox(arr: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float = 10.0,
              threshold_hu: float = -500.0, coarse_mm: float = 6.0) -> tuple[slice, slice, slice]:
    """Bounding box of the body of a ``(Z, Y, X)`` CT (HU), found at ~``coarse_mm`` resolution.

    Grown by ``margin_mm`` plus one coarse voxel; the whole array when no body is found.
    """
    strides = [max(1, int(coarse_mm // max(s, 1e-6))) for s in spacing_zyx]
    small = arr[::strides[0], ::strides[1], ::strides[2]]
    bb = bbox_of(body_mask(small, threshold_hu))
    if bb is None:
        return tuple(slice(0, n) for n in arr.shape)  # type: ignore[return-value]
    full = tuple(slice(sl.start * st, min(n, sl.stop * st)) for sl, st, n in zip(bb, strides, arr.shape))
    margin = margin_mm + max(st * sp for st, sp in zip(strides, spacing_zyx))
    return expand_bbox(full, margin, spacing_zyx, arr.shape)


def model_box(box: Sequence[slice], shape: Sequence[int], shape_model: Sequence[int]) -> tuple[slice, ...]:
    """An input-grid box (voxel ranges) as the model-grid voxels it overlaps (half-voxel convention:
    input voxel ``i`` spans ``[i, i+1) * model / input`` model voxels)."""
    return tuple(slice(int(math.floor(b.start * m / n)), min(m, int(math.ceil(b.stop * m / n))))
                 for b, n, m in zip(box, shape, shape_model))


def region_samples(shape_model: Sequence[int], shape: Sequence[int], region: Sequence[slice],
                   separate: tuple[int | None, int], device: torch.device, nearest: bool = False
                   ) -> tuple[tuple[slice, ...], tuple[AxisSamples, ...]]:
    """Stock's export samples from the model grid to the input grid (``separate``: the coarse axis
    and its order, :func:`separate_axis`), restricted to input voxels that read only model voxels
    of ``region``: ``(crop in the input grid, samples relative to the region)``."""
    samples = export_samples(shape_model, shape, *separate, device=device, nearest=nearest)
    return tuple(zip(*(s.restrict(r.start, r.stop) for s, r in zip(samples, region))))  # type: ignore[return-value]


def validate_array(arr: np.ndarray, spacing_zyx: Sequence[float], name: str) -> None:
    """Raise :class:`InputError` for arrays outside the input limits of :mod:`flareseg.image_check`
    (shape, spacing range, NaN/inf, one constant value, CT plausibility: most voxels in HU range)."""
    why = (shape_problem(arr.shape) or spacing_problem(spacing_zyx)
           # NaN first: NaN compares unequal, so an all-NaN image is not "constant"
           or nonfinite_problem(nonfinite_count(arr)) or constant_problem(arr) or ct_plausibility_problem(arr))
    if why:
        raise InputError(name, why)


class FastPredictor:
    """Predict label maps with an nnU-Net v2 model folder on the device (CUDA when present).

    The settings are one :class:`flareseg.config.InferenceConfig` (``cfg``, its defaults when
    None); keyword ``overrides`` are its own field names (``FastPredictor(m, device="cpu",
    skip_windows=False)``) and are checked like a config file.  ``self.cfg`` is what ran, and the
    predictor reads its settings there (what it derives on this machine: ``device``, ``dtype``,
    :attr:`batch_windows`, the runtime's :attr:`runners`).  The remaining keywords are not
    inference settings: which folds/checkpoint to load, whether to trust the checkpoint, and
    developer knobs for comparisons and memory (``body_margin_mm``, ``resample_probabilities``,
    ``chunk_mb``, ``autotune_after``).

    ``autotune_after``: on CUDA (not ``cfg.deterministic``), the cases this predictor runs with
    cuDNN's heuristic kernels before autotuning (``cudnn.benchmark``) starts.  Autotuning times
    every convolution's algorithms once per shape, seconds that a process predicting one case
    (FLARE's cadence: a fresh process per case) never earns back; from the second case on the
    tuned kernels serve every later case.  0: autotune from the first case (stock's choice).
    """

    def __init__(self, model: str | os.PathLike | LoadedModel, cfg: InferenceConfig | None = None, *,
                 folds: Sequence[int | str] | None = None, checkpoint: str | None = None,
                 trust_model: bool = False, body_margin_mm: float = 10.0,
                 resample_probabilities: bool = True, chunk_mb: float = 256.0, autotune_after: int = 1,
                 **overrides: Any):
        self.cfg = inference_config(cfg, "FastPredictor", **overrides)   # fails before the model loads
        self.device, problem = resolve_runtime(self.cfg.runtime, self.cfg.device)   # so does a runtime that cannot run
        if problem:
            raise ValueError(problem)
        runtime = runtime_entry(self.cfg.runtime)
        # trust_model: unpickle the checkpoints without the weights-only allow-list (code in them runs)
        self.model = model if isinstance(model, LoadedModel) else load_model(model, folds, checkpoint,
                                                                              trusted=trust_model)
        if self.model.num_input_channels != 1:
            raise ValueError(f"{self.model.model_dir}: the fast predictor handles single-channel CT, "
                             f"model has {self.model.num_input_channels} input channels")
        # the network precision that runs here, and why (float16 only on CUDA; bfloat16 on a CPU
        # with native bf16 or when asked; then what the runtime makes of it); sums and softmax stay
        # float32 except CUDA float16
        flags = cpu_flags() if self.device.type == "cpu" else frozenset()
        name, self.dtype_reason = runtime.precision(*choose_dtype(self.cfg.dtype, self.device.type, flags),
                                                    bool(set(BF16_CPU_FLAGS) & flags))
        self.dtype = DTYPES[name]
        log.info("inference dtype %s on %s (%s)", name, self.device, self.dtype_reason)
        # developer knobs (not inference settings): body box margin, nearest-neighbour export, slab size
        self.body_margin_mm, self.resample_probabilities, self.chunk_mb = \
            body_margin_mm, resample_probabilities, chunk_mb
        self.autotune_after, self.cases_run = autotune_after, 0
        self._select_cuda_kernels()   # deterministic kernels (cfg.deterministic) from here on, as for every case
        self.networks = [n.to(self.device).eval() for n in self.model.networks]
        # what runs each network: the runtime table's factory (the torch modules themselves, or
        # e.g. their OpenVINO conversion; runtime_model says where that came from)
        self.runners = runtime.factory(self.networks, self.model.num_input_channels, name)
        self.runtime_model = self.runners.source
        self.last_stats: dict[str, Any] = {}

    @property
    def runtime(self) -> str:
        """The runtime that runs the networks (``cfg.runtime``)."""
        return self.cfg.runtime

    @property
    def batch_windows(self) -> int:
        """Windows per network call: ``cfg.batch_windows``, or with 0 (auto) 4 on CUDA and 1 on a
        CPU, where a batch of windows is no faster per window and multiplies the activation
        memory (peak RSS 8.5 vs 3.4 GB on a paper-size case)."""
        return self.cfg.batch_windows or (4 if self.device.type == "cuda" else 1)

    @property
    def dtype_name(self) -> str:
        """The network precision that runs (``"float32"``, ``"bfloat16"``, ``"float16"``)."""
        return str(self.dtype).removeprefix("torch.")

    def _select_cuda_kernels(self) -> bool | None:
        """Set cuDNN's kernel selection for the next case (CUDA only; None elsewhere): deterministic
        kernels with ``cfg.deterministic``, else autotuned from case ``autotune_after`` + 1 on.
        Returns whether this case autotunes."""
        if self.device.type != "cuda":
            return None
        from flareseg.devices import set_cuda_determinism
        autotune = not self.cfg.deterministic and self.cases_run >= self.autotune_after
        set_cuda_determinism(self.cfg.deterministic, autotune=autotune)
        return autotune

    # ------------------------------------------------------------------ network callable
    def window_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``(B, 1, pz, py, px) -> (B, K, pz, py, px)`` logits: fold ensemble, optional mirroring.

        One network: its logits in the network's output type (float16 under CUDA float16
        autocast), mirrored predictions added and divided in that type, as stock nnU-Net's
        ``_internal_maybe_mirror_and_predict`` does, so the sliding window sums stock's window
        logits.  Several folds: their mean in float32."""
        axes = [a + 2 for a in (self.model.mirror_axes or ())] if self.cfg.tta else []
        flips = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
        # float16 autocast only on CUDA, as stock: on a CPU stock runs the network in float32 and
        # sums in float16, which is what dtype float16 reproduces there; a runtime other than
        # torch sets its precision itself
        use_amp = self.runners.autocast and (
            self.dtype == torch.bfloat16 or (self.dtype == torch.float16 and self.device.type == "cuda"))
        # bfloat16 (8 mantissa bits) is only the network's arithmetic: its logits are summed in float32
        upcast = self.dtype == torch.bfloat16

        def one(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            y = net(x).float() if upcast else net(x)
            for f in flips[1:]:
                y += torch.flip(net(torch.flip(x, f)), f)
            return y / len(flips) if len(flips) > 1 else y

        runners = self.runners.networks or self.networks

        def fn(x: torch.Tensor) -> torch.Tensor:
            ctx = torch.autocast(self.device.type, dtype=self.dtype) if use_amp else nullcontext()
            with ctx:
                if len(runners) == 1:
                    return one(runners[0], x)
                total = None
                for net in runners:
                    y = one(net, x).float()
                    total = y if total is None else total.add_(y)
            return total.div_(len(runners))  # type: ignore[union-attr]
        return fn

    # ------------------------------------------------------------------ prediction
    def predict(self, image: str | os.PathLike | sitk.Image, series: str | Sequence[str] | None = None) -> sitk.Image:
        """Label map of ``image`` (path, DICOM folder or SimpleITK image) with its exact geometry;
        ``series``: the SeriesInstanceUID to read from a DICOM folder holding several."""
        return self.run(image, series=series).labels

    @torch.inference_mode()
    def run(self, image: str | os.PathLike | sitk.Image, save_probabilities: bool = False,
            prob_hook: Callable[[torch.Tensor], Any] | None = None,
            slab_hook: Callable[[Iterator[torch.Tensor]], Any] | None = None,
            progress: Callable[[int, int], None] | None = None,
            series: str | Sequence[str] | None = None) -> Prediction:
        """Predict one case; ``stats`` holds seconds per step and window counts.  ``series``
        picks one series of a DICOM folder holding several (:func:`flareseg.io.read_image`).

        ``prob_hook`` receives the softmax probabilities ``(K, Z, Y, X)`` at model resolution and in
        model layout (reoriented, then transposed by the plans), on the device, and its return value
        lands in ``Prediction.hook_result`` (stage-2 computes uncertainty there, so probabilities
        never leave the device).  ``slab_hook`` instead receives those probabilities as an iterator
        of slabs ``(K, rows, Y, X)`` along the leading axis, in order, each at most ``chunk_mb`` of
        float32, so no full-size probability map exists on the device (stage-2's default scorer).
        ``stats["reoriented"]`` is the applied axis permutation or None.  ``progress(done, total)``
        is called with the sliding windows run so far and the grid's window count (first with
        ``(0, total)``, then after every batch; skipped windows never run)."""
        c = self.cfg
        t = _Timer(self.device)
        name = "<in-memory image>"
        if not isinstance(image, sitk.Image):
            name = str(image)
            image = read_image(image, series=series)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(name, f"expected a scalar 3-D image, got {image.GetDimension()}-D")
        arr = sitk.GetArrayViewFromImage(image)
        spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
        validate_array(arr, spacing, name)
        t.lap("read")

        # input array -> axial layout (orientation) -> model layout (plans' transpose_forward)
        # (reorient: permuted and flipped to LPS ascending, as import writes training data)
        ro = axial_reorientation(image.GetDirection(), canonical=True) if self.cfg.reorient else None
        flips = ro.flips if ro else ()
        if flips:
            arr = np.flip(arr, flips)
        ax = ro.perm if ro else (0, 1, 2)
        tf = tuple(ax[i] for i in self.model.transpose_forward)
        tb = tuple(int(i) for i in np.argsort(tf))
        arr_t = arr.transpose(tf)
        sp_t = tuple(spacing[i] for i in tf)
        full_np = np.array(arr_t, order="C")  # writable copy (the image's view is read-only)
        t.lap("transpose")

        x = torch.from_numpy(full_np if full_np.dtype in (np.int16, np.float32, np.uint8)
                             else full_np.astype(np.float32))
        x = x.to(self.device, non_blocking=True).float()
        t.lap("upload")
        # the whole image is normalised and resampled, as stock does (cheap on the device); the
        # crop to the body only decides which of stock's windows run
        normalize_(x, self.model.normalization_schemes[0], self.model.intensity_properties[0],
                   self.model.use_mask_for_norm[0])
        shape_model = target_shape(full_np.shape, sp_t, self.model.spacing)
        del full_np
        if self.cfg.image_resampling == "bspline":
            x = resample_image_bspline(x, shape_model, *self._stock_axis_rule("data", sp_t, self.model.spacing))
        elif self.cfg.image_resampling == "nnunet":
            x = self._nnunet_resample(x, sp_t, shape_model)
        else:
            x = resample_image(x, shape_model)
        region, starts = (tuple(slice(0, n) for n in shape_model), None)
        if c.crop_to_body:
            region, starts = windows_covering(shape_model, self.model.patch_size, c.step_size,
                                              model_box(body_bbox(arr_t, sp_t, self.body_margin_mm),
                                                        arr_t.shape, shape_model))
        x = x[region][None]
        t.lap("preprocess")

        want_probs = save_probabilities or prob_hook is not None or slab_hook is not None
        linear = self.resample_probabilities and tuple(shape_model) != arr_t.shape
        autotune = self._select_cuda_kernels()
        self.cases_run += 1
        out, wstats = predict_sliding_window(
            x, self.window_fn(), self.model.patch_size, c.step_size, self.batch_windows,
            c.skip_windows, c.skip_threshold, self.dtype, return_logits=want_probs or linear,
            grow=c.skip_grow, starts=starts, windows_done=progress)
        res_dev = out.device   # the host after the sliding window's out-of-memory fallback
        del x
        hook_result = None
        if want_probs and prob_hook is not None:
            probs = torch.softmax(out.float(), 0)
            if not (linear or save_probabilities):
                out = None  # free the logits before the hook runs
            if not linear:
                labels_m = probs.argmax(0).to(torch.uint8)
            hook_result = prob_hook(probs)
            del probs
        elif slab_hook is not None or (want_probs and not linear):
            # the softmax a slab of float32 scores at a time (no full score map): to the slab hook,
            # and its argmax is the model-grid label map when no export interpolation follows
            if not linear:
                labels_m = torch.empty(out.shape[1:], dtype=torch.uint8, device=out.device)
            per = self._slab_rows(out.shape[0], out.shape[2] * out.shape[3])

            def slabs() -> Iterator[torch.Tensor]:
                for a in range(0, out.shape[1], per):
                    p = torch.softmax(out[:, a:a + per].float(), 0)
                    if not linear:
                        labels_m[a:a + per] = p.argmax(0).to(torch.uint8)
                    yield p
            it = slabs()
            if slab_hook is not None:
                hook_result = slab_hook(it)
            for _ in it:          # whatever the hook left unread (the labels need every slab)
                pass
            if not (linear or save_probabilities):
                out = None
        elif not linear:
            labels_m = out
        t.lap("sliding_window")

        # stock's export: logits linearly (nearest along a separate coarse axis) to the input grid,
        # then argmax; input voxels that read only model voxels of the region get labels
        sep = self._stock_axis_rule("probabilities", self.model.spacing, sp_t)
        crop, samples = region_samples(shape_model, arr_t.shape, region, sep, res_dev, nearest=not linear)
        full = torch.zeros(arr_t.shape, dtype=torch.uint8, device=res_dev)
        full[crop] = argmax_of_interpolation(out, samples, self.chunk_mb) if linear \
            else take_nearest(labels_m, samples)
        labels = full.permute(*tb).cpu().numpy()
        if flips:
            labels = np.ascontiguousarray(np.flip(labels, flips))
        prob_np = None
        if save_probabilities:
            prob_np = self._probabilities_to_input(
                out, *region_samples(shape_model, arr_t.shape, region, sep, res_dev), arr_t.shape, tb)
            if flips:
                prob_np = np.ascontiguousarray(np.flip(prob_np, tuple(a + 1 for a in flips)))
        out = None
        t.lap("export")

        out_img = sitk.GetImageFromArray(labels)
        out_img.CopyInformation(image)
        self.last_stats = {
            "seconds": t.seconds, "windows": wstats.as_dict(), "device": str(self.device),
            "dtype": self.dtype_name, "dtype_reason": self.dtype_reason, "runtime": self.runtime,
            "batch_windows": self.batch_windows, "cudnn_autotune": autotune,
            "shape_input_zyx": list(arr.shape), "shape_cropped": [s.stop - s.start for s in crop],
            "shape_model": list(shape_model), "crop": [[s.start, s.stop] for s in crop],
            "region_model": [[s.start, s.stop] for s in region],
            "reoriented": None if ro is None or ro.perm == (0, 1, 2) else list(ro.perm),
            "flipped": list(flips),
        }
        return Prediction(out_img, prob_np, dict(self.last_stats), hook_result, image)

    def _stock_axis_rule(self, kind: str, current: Sequence[float],
                         new: Sequence[float]) -> tuple[int | None, int]:
        """(axis resampled on its own, its interpolation order) for the plans' ``resampling_fn_<kind>``
        from spacing ``current`` to ``new``: stock nnU-Net's anisotropy rule."""
        kw = self.model.resampling_kwargs.get(kind, {})
        return separate_axis(current, new, kw.get("force_separate_z")), int(kw.get("order_z", 0))

    def _nnunet_resample(self, x: torch.Tensor, spacing: Sequence[float], shape: Sequence[int]) -> torch.Tensor:
        """The plans' own nnU-Net image resampling (scipy, on the CPU): stock's input to the network, slow."""
        out = nnunet_image_resampler(self.model)(x[None].cpu().numpy(), tuple(shape), list(spacing),
                                                 list(self.model.spacing))
        return torch.from_numpy(np.ascontiguousarray(out[0], dtype=np.float32)).to(self.device)

    def _slab_rows(self, k: int, row_voxels: int) -> int:
        """Rows (leading spatial axis) of a slab of at most ``chunk_mb`` of float32 scores of ``k``
        classes, ``row_voxels`` voxels per row."""
        return max(1, int(self.chunk_mb * 2 ** 20 // (4 * k * max(1, row_voxels))))

    def _probabilities_to_input(self, logits: torch.Tensor, crop, samples, full_shape, tb) -> np.ndarray:
        """Stock's probability export: logits of the model region linearly to the input grid at
        ``samples`` (written into ``crop``), then softmax, so their argmax is the label map;
        background 1 where no window ran.

        The map is written slab by slab (rows of the leading axis) straight into a float16 host
        array: on the device only one slab exists at a time, its float32 interpolation stages
        (each at most ``chunk_mb``) and the model rows it reads, promoted to float32 there, so
        peak device memory does not grow with the input's size beyond the logits themselves
        (docs/benchmarks.md, "Peak device memory of probability exports")."""
        k = logits.shape[0]
        host = np.zeros((k, *full_shape), dtype=np.float16)
        host[0] = 1
        s0, rest = samples[0], samples[1:]
        ym, xm = logits.shape[2], logits.shape[3]
        ny, nx = len(rest[0]), len(rest[1])
        # largest float32 stage per output row: model rows after z, after y, after x (= the output)
        per = self._slab_rows(k, max(ym * xm, ny * xm, ny * nx))
        for a in range(0, len(s0), per):
            i0, i1 = s0.i0[a:a + per], s0.i1[a:a + per]
            lo, hi = int(i0.min()), int(i1.max()) + 1          # model rows this slab reads
            part = AxisSamples(i0 - lo, i1 - lo, s0.w[a:a + per], s0.paired)
            rows = slice(crop[0].start + a, crop[0].start + a + len(part))
            slab = torch.softmax(interpolate(logits[:, lo:hi].float(), [part, *rest]), 0)
            host[(slice(None), rows, *crop[1:])] = slab.to(torch.float16).cpu().numpy()
            del slab
        return host.transpose(0, *[a + 1 for a in tb])


class _Timer:
    """Seconds per pipeline step (device synchronised so GPU work is charged to its step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.t0 = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 4)
        self.seconds["total"] = round(now - self.t0, 4)
        self.last = now
