"""CPU levers for the paper-size network, each measured on its own: one sliding window, seconds.

The network is nnU-Net's PlainConvUNet at the paper's coarse plan (6 stages, features 32…320, two
convolutions per stage, patch 32x192x192 at 2.5x1.5x1.5 mm; random weights: only speed matters
here, agreement is measured with a fitted model in bench/predictor_speed.py and
tests/test_cpu_dtype.py).  Levers: float32 vs bfloat16 autocast, channels_last_3d,
``torch.compile`` (inductor), ``torch.jit.freeze`` with oneDNN graph fusion, torch threads, window
batch 1 vs 2, and two runtimes made for CPU inference: OpenVINO (``fp32_openvino``, flareseg's
``inference.runtime: openvino``; set-up = conversion, plus the per-process set-up from its cache)
and ONNX Runtime (``fp32_onnxruntime``; needs ``onnx``/``onnxruntime``, not project dependencies:
a lever whose package is missing is reported as failed).  Every lever runs once untimed (compilation, oneDNN kernel selection; its seconds
are reported), then ``--repeats`` rounds in which the levers take turns (interleaved, so load from
other processes hits all alike); the median seconds per window is reported, with the argmax
agreement of its logits vs float32's (random weights: near-tied logits, a lower bound).

    python -m bench.cpu_levers                                   # the paper patch, 3 repeats
    python -m bench.cpu_levers --patch 32,96,96 --levers fp32,bf16 --out /tmp/x.md
    python -m bench.cpu_levers --levers fp32,fp32_openvino,fp32_onnxruntime   # runtimes only
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from bench._common import (add_overwrite_arg, machine_line as common_machine_line,
                           refuse_input_outputs, run_bench, write_report)
from flareseg.inference.predictor import choose_dtype, cpu_flags
from flareseg.nnunet.model import load_model
from tests.tiny_model import tiny_plans, write_model_folder

PAPER_FEATURES = (32, 64, 128, 256, 320, 320)


def machine_line() -> str:
    return (common_machine_line("cpu").removeprefix("machine: ")
            + f"; dtype auto here: {choose_dtype('auto', 'cpu', cpu_flags())[0]}")


class Lever:
    """One configuration: ``prepare()`` builds the callable (untimed except as set-up seconds)."""

    def __init__(self, name: str, net: torch.nn.Module, x: torch.Tensor, *, bf16: bool = False,
                 channels_last: bool = False, compile: bool = False, jit: bool = False,
                 threads: int | None = None, batch: int = 1, runtime: str | None = None):
        self.name, self.net, self.bf16, self.cl, self.compile, self.jit = name, net, bf16, channels_last, compile, jit
        self.threads, self.batch, self.runtime = threads, batch, runtime
        self.note = ""
        self.x = x.repeat(batch, 1, 1, 1, 1)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last_3d)
        self.fn = None
        self.setup_s = 0.0
        self.times: list[float] = []
        self.out: torch.Tensor | None = None

    def ctx(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def prepare(self) -> None:
        t = time.perf_counter()
        net = self.net
        if self.cl:
            net = net.to(memory_format=torch.channels_last_3d)
        if self.compile:
            net = torch.compile(net)
        if self.runtime == "openvino":
            from flareseg.inference.openvino_runtime import OpenVINONetwork
            cache = Path(tempfile.mkdtemp(prefix="flareseg_levers_ov_"))
            net = OpenVINONetwork(net, 1, "bf16" if self.bf16 else "f32", cache=cache)
            net(self.x)
            t_cached = time.perf_counter()   # what a later process pays: read the cached IR, compile
            net = OpenVINONetwork(self.net, 1, "bf16" if self.bf16 else "f32", cache=cache)
            net._request(tuple(self.x.shape))
            self.note = f"from cache: {time.perf_counter() - t_cached:.1f} s set-up"
            self.bf16 = False                # OpenVINO's own precision hint, no torch autocast
        elif self.runtime == "onnxruntime":
            import onnxruntime as ort
            path = Path(tempfile.mkdtemp(prefix="flareseg_levers_ort_")) / "net.onnx"
            with torch.no_grad():
                torch.onnx.export(self.net, (self.x,), str(path), dynamo=False, opset_version=17)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            net = lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])  # noqa: E731
        if self.jit:
            torch.jit.enable_onednn_fusion(True)
            with torch.no_grad(), self.ctx():
                net = torch.jit.freeze(torch.jit.trace(net, self.x, check_trace=False))
                net(self.x)   # the profiling runs that oneDNN graph fuses after
        self.fn = net
        self.out = self.run()     # first call: compilation / kernel selection
        self.setup_s = time.perf_counter() - t
        self.times.clear()

    def run(self) -> torch.Tensor:
        old = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.jit:
            torch.jit.enable_onednn_fusion(True)
        try:
            t = time.perf_counter()
            with torch.inference_mode(), self.ctx():
                y = self.fn(self.x)
            self.times.append((time.perf_counter() - t) / self.batch)
            return y[:1].float()
        finally:
            torch.set_num_threads(old)
            if self.jit:
                torch.jit.enable_onednn_fusion(False)

    def reset(self) -> None:
        if self.cl:   # the module was converted in place: back to the default layout for the others
            self.net.to(memory_format=torch.contiguous_format)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", default="32,192,192", help="window z,y,x (default the paper's 32,192,192)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--levers", default="fp32,bf16,fp32_cl,bf16_cl,fp32_threads1,fp32_batch2,bf16_batch2,"
                                        "fp32_jit,bf16_jit,fp32_compile,bf16_compile",
                    help="comma-separated subset of the levers, in this order")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/predictor_levers.md"))
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_input_outputs({"--out": args.out}, overwrite=args.overwrite)   # synthetic inputs: only a stranger's file
    patch = tuple(int(p) for p in args.patch.split(","))
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="flareseg_levers_"))
    md = write_model_folder(tmp / "model", plans=tiny_plans(patch_size=patch, spacing=(2.5, 1.5, 1.5),
                                                           features=PAPER_FEATURES, convs_per_stage=2), seed=0)
    net = load_model(md).networks[0].eval()
    params = sum(p.numel() for p in net.parameters()) / 1e6
    x = torch.randn(1, 1, *patch)
    spec = {
        "fp32": {}, "bf16": dict(bf16=True),
        "fp32_cl": dict(channels_last=True), "bf16_cl": dict(bf16=True, channels_last=True),
        "fp32_threads1": dict(threads=1), "bf16_threads1": dict(bf16=True, threads=1),
        "fp32_batch2": dict(batch=2), "bf16_batch2": dict(bf16=True, batch=2),
        "fp32_jit": dict(jit=True), "bf16_jit": dict(bf16=True, jit=True),
        "fp32_compile": dict(compile=True), "bf16_compile": dict(bf16=True, compile=True),
        "fp32_openvino": dict(runtime="openvino"), "bf16_openvino": dict(bf16=True, runtime="openvino"),
        "fp32_onnxruntime": dict(runtime="onnxruntime"),
    }
    names = [s.strip() for s in args.levers.split(",") if s.strip()]
    unknown = [s for s in names if s not in spec]
    if unknown:
        ap.error(f"unknown lever(s) {unknown}; known: {', '.join(spec)}")
    levers, failed = [], {}
    for name in names:
        lv = Lever(name, net, x, **spec[name])
        try:
            lv.prepare()
            levers.append(lv)
        except Exception as e:   # a lever this torch/CPU cannot run is a result, not a crash
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        finally:
            lv.reset()
        print(f"prepared {name}: {lv.setup_s:.1f} s" + (f" FAILED {failed[name]}" if name in failed else ""),
              flush=True)
    for r in range(args.repeats):
        for lv in levers:
            if lv.cl:
                lv.net.to(memory_format=torch.channels_last_3d)
            lv.run()
            lv.reset()
        print(f"round {r + 1}: " + ", ".join(f"{lv.name} {lv.times[-1]:.2f}" for lv in levers), flush=True)

    ref = next((lv for lv in levers if lv.name == "fp32"), None)
    base = statistics.median(ref.times) if ref else None
    cmd = "python -m bench.cpu_levers" + (f" --patch {args.patch}" if args.patch != "32,192,192" else "") \
        + f" --repeats {args.repeats} --levers {','.join(names)}"
    lines = ["# CPU levers: one window of the paper-size network", "",
             f"Command: `{cmd}`", "", f"Machine: {machine_line()}.", "",
             f"Network: PlainConvUNet features {PAPER_FEATURES}, 2 convs per stage ({params:.1f} M parameters), "
             f"one window {patch}, random weights. Median of {args.repeats} interleaved rounds, seconds per window "
             f"(batch 2: per window). Set-up: the untimed first call (compilation, tracing, kernel selection).",
             "", "| lever | s / window (median) | runs | vs fp32 | set-up s | argmax = fp32's | note |", "|---|---|---|---|---|---|---|"]
    for lv in levers:
        med = statistics.median(lv.times)
        agree = float((lv.out.argmax(1) == ref.out.argmax(1)).float().mean()) if ref else float("nan")
        lines.append(f"| {lv.name} | {med:.2f} | {', '.join(f'{t:.2f}' for t in lv.times)} | "
                     + (f"{base / med:.2f}x" if base else "-") + f" | {lv.setup_s:.1f} | {agree:.4f} | {lv.note} |")
    for name, why in failed.items():
        lines.append(f"| {name} | failed: {why} | | | | | |")
    text = "\n".join(lines) + "\n"
    write_report(text, args.out, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "cpu_levers"))
