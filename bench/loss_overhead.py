"""Forward+backward time of the partial-label loss vs nnU-Net's DC_and_CE_loss, side by side.

    python -m bench.loss_overhead [--shape 2 15 32 96 96] [--reps 15] [--threads 2] [--device cpu]

Runs are interleaved (every loss once per round, order rotated each round).  Reported: median and min time, the
ratio of medians ``ours / nnU-Net`` and the median over rounds of the ratio to the reference run of
the same round (robust to load drift on a shared machine); 1.00 = no overhead.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench._common import interleaved, machine_line, run_bench
from flareseg.labels import ALL_ANNOTATED, ORGANS
from flareseg.losses.merge_max import PartialLabelLoss


def _time(fn, logits, target, device) -> float:
    x = logits.detach().clone().requires_grad_(True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(x, target).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=5, default=[2, 15, 32, 96, 96], metavar=("B", "C", "Z", "Y", "X"))
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-dice", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(*args.shape, generator=gen).to(device)
    target = torch.randint(0, args.shape[1], (args.shape[0], 1, *args.shape[2:]), generator=gen).to(device)
    ref = DC_and_CE_loss({"batch_dice": args.batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                         weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    cases = {"nnU-Net DC_and_CE (reference)": lambda x, t: ref(x, t)}
    for variant, annotated, name in [
        ("merge_max", ALL_ANNOTATED, "merge_max, A = all 14 (identity path)"),
        ("merge_max", ORGANS, "merge_max, A = 13 organs"),
        ("merge_max", (1, 14), "merge_max, A = {1, 14}"),
        ("marginal", (1, 14), "marginal, A = {1, 14}"),
        ("released", (1, 2, 3, 13), "released, A = {1, 2, 3, 13}"),
        ("naive", (1, 14), "naive, A = {1, 14}"),
    ]:
        loss = PartialLabelLoss(variant, batch_dice=args.batch_dice)
        cases[name] = lambda x, t, loss=loss, a=annotated: loss(x, t, a)

    for k, fn in cases.items():  # warm-up
        _time(fn, logits, target, device)
    # the order rotates each round so no loss always runs first; paired ratios need every time
    times = interleaved({k: (lambda fn=fn: _time(fn, logits, target, device)) for k, fn in cases.items()},
                        args.reps, reduce=None, rotate=True, self_timed=True)
    base = statistics.median(times["nnU-Net DC_and_CE (reference)"])
    print(machine_line(str(device)))
    print(f"shape {tuple(args.shape)}, device {device}, threads {args.threads}, batch_dice {args.batch_dice}, "
          f"reps {args.reps} (median)")
    ref_t = times["nnU-Net DC_and_CE (reference)"]
    print("| loss | median ms | min ms | ratio of medians | median of paired ratios |\n|---|---:|---:|---:|---:|")
    for k, v in times.items():
        m = statistics.median(v)
        paired = statistics.median(a / r for a, r in zip(v, ref_t))
        print(f"| {k} | {m * 1e3:.1f} | {min(v) * 1e3:.1f} | {m / base:.2f} | {paired:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "loss_overhead"))
