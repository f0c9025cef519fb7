"""Training iterations/s of stock ``nnUNetTrainer`` vs ``FlareSegTrainer`` on the same plans and data.

    python -m bench.trainer_throughput [--work /tmp/bench4work] [--config configs/demo.yaml]
                                       [--iters 5] [--repeats 8] [--threads 2] [--workers 0]

Prepares stage-1's data part once (phantoms -> nnU-Net dataset -> fine plans + preprocessing; an
existing stage-1 work folder is reused), then builds both trainers in this process on the same
plans, configuration, fold, device, batch size and patch (network weights from the same seed),
each with its own data loader (stock: nnU-Net's; ours: label-type batches).  Timing runs in
blocks of ``--iters`` iterations per trainer, alternating the order every repeat (ABBA...), after
``--warmup`` untimed iterations each.  Two figures per trainer:

* ``train_step``: forward + loss + backward + optimizer step on a batch already loaded;
* ``load + step``: ``next(dataloader)`` (sampling, cropping, augmentation) + ``train_step``.

Reported: median seconds per iteration, iterations/s, the ratio FlareSeg/stock of iterations/s
(goal >= 0.95) and the median over repeats of the per-block paired ratio (robust to load drift on
a shared machine).  The foreground oversampling is set to the same value for both (stock's 0.33
by default) so only the trainer's own mechanics differ.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from bench._common import add_overwrite_arg, machine_line, nnunet_process, run_bench, write_json_report
from bench.phantom_setup import add_data_args, prepare, refuse_data_outputs

TRAINERS = ("nnUNetTrainer", "FlareSegTrainer")


def build_trainer(name: str, dataset: str, configuration: str, device: torch.device, seed: int,
                  oversample: float):
    """An initialised trainer with its training data loader, network in train mode."""
    from nnunetv2.run.run_training import get_trainer_from_args
    torch.manual_seed(seed)
    tr = get_trainer_from_args(dataset, configuration, 0, name, "nnUNetPlans", device=device)
    tr.oversample_foreground_percent = oversample   # same for both (stock hard-codes 0.33)
    tr.initialize()
    gen_tr, _ = tr.get_dataloaders()
    tr.network.train()
    return tr, gen_tr


def timed_iteration(tr, gen) -> tuple[float, float, object]:
    """Seconds for ``next(gen)`` and for ``train_step`` (synchronised on CUDA), and the label type."""
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    batch = next(gen)
    t1 = time.perf_counter()
    tr.train_step(batch)
    sync()
    t2 = time.perf_counter()
    lt = batch.get("label_type")
    return t1 - t0, t2 - t1, tuple(lt) if lt is not None else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(ap)
    ap.add_argument("--configuration", default="fine", choices=("fine", "coarse"))
    ap.add_argument("--iters", type=int, default=5, help="iterations per block")
    ap.add_argument("--repeats", type=int, default=8, help="blocks per trainer")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations per trainer first")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--workers", type=int, default=0, help="nnUNet_n_proc_DA (0 = load in this process)")
    ap.add_argument("--oversample", type=float, default=0.33, help="foreground oversampling, both trainers")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw", type=Path, default=None, help="write every timing (JSON) here")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_data_outputs({"--raw": args.raw}, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from flareseg.config import TrainConfig
    from flareseg.nnunet.env import NNUNetPaths
    from flareseg.nnunet.training import write_train_config

    data = prepare(args.work, args.config, args.overrides, configurations=(args.configuration,))
    # trainer logs go to a results root of their own, never next to real models
    NNUNetPaths(data.paths.raw, data.paths.preprocessed, data.stage_dir.parent / "throughput_results").export()
    device = torch.device(args.device)
    nnunet_process(device.type, workers=args.workers, threads=args.threads)
    write_train_config(data.plans_file, args.configuration,
                       TrainConfig(epochs=1, iterations_per_epoch=args.iters, oversample_foreground=args.oversample,
                                   num_workers=args.workers, device=device.type))

    trainers = {}
    for name in TRAINERS:
        trainers[name] = build_trainer(name, data.dataset_name, args.configuration, device, args.seed,
                                       args.oversample)
    stock, ours = (trainers[n][0] for n in TRAINERS)
    assert stock.batch_size == ours.batch_size, (stock.batch_size, ours.batch_size)
    assert list(stock.configuration_manager.patch_size) == list(ours.configuration_manager.patch_size)

    for name, (tr, gen) in trainers.items():
        for _ in range(args.warmup):
            timed_iteration(tr, gen)
    load = {n: [] for n in TRAINERS}
    step = {n: [] for n in TRAINERS}
    block_step = {n: [] for n in TRAINERS}
    block_total = {n: [] for n in TRAINERS}
    types: Counter = Counter()
    for r in range(args.repeats):
        order = TRAINERS if r % 2 == 0 else TRAINERS[::-1]
        for name in order:
            tr, gen = trainers[name]
            bl, bs = [], []
            for _ in range(args.iters):
                tl, ts, lt = timed_iteration(tr, gen)
                bl.append(tl)
                bs.append(ts)
                if name == "FlareSegTrainer":
                    types[lt] += 1
            load[name] += bl
            step[name] += bs
            block_step[name].append(statistics.median(bs))
            block_total[name].append(statistics.median(a + b for a, b in zip(bl, bs)))
        logging.info("repeat %d/%d done", r + 1, args.repeats)

    write_json_report({"load": load, "step": step, "block_step": block_step, "block_total": block_total,
                       "order": list(TRAINERS)}, args.raw, args.overwrite)
    cm = stock.configuration_manager
    print(f"\nconfiguration {args.configuration}: patch {list(cm.patch_size)}, batch {stock.batch_size}, "
          f"device {device}, threads {args.threads}, nnUNet_n_proc_DA {args.workers}, oversample {args.oversample}, "
          f"deep supervision {ours.enable_deep_supervision}; {args.repeats} blocks x {args.iters} iterations "
          f"per trainer (+{args.warmup} warm-up), interleaved")
    print(machine_line(str(device)))
    print("| trainer | train_step s/it (median) | it/s | load + step s/it (median) | it/s | load s/it |")
    print("|---|---:|---:|---:|---:|---:|")
    med = {}
    for n in TRAINERS:
        s = statistics.median(step[n])
        t = statistics.median(a + b for a, b in zip(load[n], step[n]))
        med[n] = (s, t)
        print(f"| {n} | {s:.3f} | {1 / s:.2f} | {t:.3f} | {1 / t:.2f} | {statistics.median(load[n]):.3f} |")
    a, b = TRAINERS
    paired_s = statistics.median(x / y for x, y in zip(block_step[a], block_step[b]))
    paired_t = statistics.median(x / y for x, y in zip(block_total[a], block_total[b]))
    print("\nratio FlareSeg/stock iterations/s (goal >= 0.95):")
    print(f"  train_step:   {med[a][0] / med[b][0]:.3f} (ratio of medians), {paired_s:.3f} (median of paired block ratios)")
    print(f"  load + step:  {med[a][1] / med[b][1]:.3f} (ratio of medians), {paired_t:.3f} (median of paired block ratios)")
    print("FlareSeg batch label types: " + ", ".join(f"{k}: {v}" for k, v in types.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "trainer_throughput"))
