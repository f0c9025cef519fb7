"""The FLARE efficiency table of flareseg and of stock nnU-Net on the same model and cases (issue 17).

One command for a GPU owner::

    python -m bench.flare_efficiency --model MODEL_DIR --inputs IMAGES_DIR --out reports/flare_eff

Each predictor runs once per case in a fresh process, measured by ``flareseg efficiency``'s harness
(:func:`flareseg.evaluation.efficiency.measure_efficiency`) with the FLARE23 harness's cadence
(``--sampling official``: query GPU memory, sleep 0.1 s): time per case, GPU memory peak (total -
free of the card the process runs on, ``CUDA_VISIBLE_DEVICES`` mapped to the physical card) and the
official AUC (sum of samples x 0.1 s), next to the AUC over the real sample times and the peak net
of the memory already used before the case.

* ``flareseg``: ``flareseg predict -i {input} -o {output} -m MODEL``, with the inference settings the
  model folder carries (``flareseg_inference.json``: what stage-6 measured, written by stage-6 and
  ``flareseg export-model``), else the defaults (float16 on CUDA, window skipping on); ``--device``
  given here wins over the folder's device.  The table names the settings and where they came from;
* ``stock``: ``nnUNetPredictor`` from the same folder (step 0.5, mirroring as stock's default unless
  ``--stock-no-mirroring``; ``nnUNet_extTrainer`` set so it finds our trainer), on the device
  flareseg uses.

Outputs: ``OUT/<predictor>/efficiency.{csv,json}``, ``OUT/<predictor>/outputs``, and the markdown
table ``OUT/flare_efficiency.md`` (also printed).  This process never touches CUDA itself, so no
context of its own sits on the card while the cases are measured.  Exit 0, or 1 when some case
failed (the table still lists every case).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flareseg.evaluation.efficiency import measure_efficiency, summarize, write_efficiency_reports
from flareseg.evaluation.gpu_memory import probe_backend
from bench._common import add_overwrite_arg, refuse_input_outputs, run_bench, write_report
from flareseg.nnunet.env import trainer_dir

INTERVAL = 0.1      # the FLARE23 harness's sampling interval, s

STOCK = """
import sys, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
model, src, dst, dev, mirror = sys.argv[1:6]
dev = "cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev)
p = nnUNetPredictor(tile_step_size=0.5, use_mirroring=mirror == "1", device=torch.device(dev),
                    perform_everything_on_device=dev == "cuda", allow_tqdm=False)
p.initialize_from_trained_model_folder(model, use_folds=None)
ending = p.dataset_json["file_ending"]          # stock appends it to the output name
p.predict_from_files([[src]], [dst[:-len(ending)] if dst.endswith(ending) else dst], save_probabilities=False, overwrite=True,
                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
"""


def ours_command(model: Path, device: str | None) -> list[str]:
    """``flareseg predict`` with the model folder's settings; ``--device`` only when ``device``."""
    return [sys.executable, "-m", "flareseg.cli", "predict", "-i", "{input}", "-o", "{output}", "-m", str(model),
            *(["--device", device] if device else []), "-q"]


def settings_line(model: Path) -> str:
    """Which inference settings ``flareseg predict -m model`` starts from (a line of the table)."""
    from flareseg.inference.model_settings import read_model_settings, settings_path
    stored = read_model_settings(model)
    if not stored:
        return f"flareseg inference settings: the defaults ({settings_path(model).name} not in {model})"
    return (f"flareseg inference settings: {settings_path(model)}: "
            + ", ".join(f"{k}={v}" for k, v in sorted(stored.items())))


def stock_command(model: Path, device: str, mirroring: bool) -> list[str]:
    return [sys.executable, "-c", STOCK, str(model), "{input}", "{output}", device, "1" if mirroring else "0"]


def _f(v, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(results: dict[str, tuple[list[dict], dict]]) -> str:
    """Markdown: one summary row per predictor (time per case, GPU peak, official AUC, ...), then
    one row per case and predictor."""
    first = next((s for _, s in results.values() if s.get("gpu_card")), None)
    card = first["gpu_card"] if first else None
    head = [f"GPU sampled: {card['name']} (physical index {card['physical_index']}, {card['uuid']})"
            if card else "GPU memory unavailable (no NVML and no nvidia-smi): times only", "",
            "| predictor | cases | failed | s/case mean | s/case max | GPU peak MB | GPU AUC MB*s mean "
            "(official, sum x 0.1) | AUC over real times MB*s | peak net of baseline MB | baseline MB | RSS peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (_, s) in results.items():
        head.append(f"| {name} | {s['n_cases']} | {s['n_failed']} | {_f(s['wall_s_mean'], '{:.2f}')} | "
                    f"{_f(s['wall_s_max'], '{:.2f}')} | {_f(s['gpu_max_mb'])} | {_f(s['gpu_auc_mb_s_mean'])} | "
                    f"{_f(s['gpu_auc_time_mb_s_mean'])} | {_f(s['gpu_max_net_mb'])} | "
                    f"{_f(s['gpu_baseline_mb_max'])} | {_f(s['rss_peak_mb_max'])} |")
    head += ["", "| case | predictor | rc | s | GPU peak MB | GPU AUC MB*s (official) | AUC over real times MB*s | "
             "mean sample period s |", "|---|---|---|---|---|---|---|---|"]
    cases = [r["case"] for r in next(iter(results.values()))[0]] if results else []
    for case in cases:
        for name, (rows, _) in results.items():
            r = next(r for r in rows if r["case"] == case)
            head.append(f"| {case} | {name} | {r['returncode']} | {r['wall_s']:.2f} | {_f(r['gpu_max_mb'])} | "
                        f"{_f(r['gpu_auc_mb_s'])} | {_f(r['gpu_auc_time_mb_s'])} | "
                        f"{_f(r['gpu_period_mean_s'], '{:.3f}')} |")
    return "\n".join(head) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="nnU-Net model folder (stage-5's model_dir)")
    ap.add_argument("--inputs", required=True, type=Path, nargs="+", help="image files or folders of them")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                    help="default: the model folder's inference.device, else auto")
    ap.add_argument("--gpu-index", type=int, default=0, help="cuda:N the processes use (default 0)")
    ap.add_argument("--timeout", type=float, default=None, help="kill a case after this many seconds")
    ap.add_argument("--stock-no-mirroring", action="store_true", help="stock without its default mirroring")
    ap.add_argument("--no-stock", action="store_true", help="flareseg only")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_input_outputs({"--out": args.out / "flare_efficiency.md"}, args.inputs, args.model, overwrite=args.overwrite)
    from flareseg.evaluation.commands import _expand_inputs
    inputs = _expand_inputs(args.inputs)
    try:
        backend = probe_backend(args.gpu_index)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from flareseg.config import ConfigError
    from flareseg.inference.model_settings import read_model_settings
    try:
        settings = settings_line(args.model)
        stock_device = args.device or read_model_settings(args.model).get("device", "auto")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("nnUNet_extTrainer", trainer_dir())     # stock finds FlareSegTrainer
    runs = {"flareseg": ours_command(args.model, args.device)}
    if not args.no_stock:
        runs["stock nnU-Net"] = stock_command(args.model, stock_device, not args.stock_no_mirroring)
    results = {}
    for name, cmd in runs.items():
        out = args.out / name.split()[0]
        rows = measure_efficiency(cmd, inputs, out, INTERVAL, args.timeout, args.gpu_index,
                                  sampling="official", backend=backend)
        summary = summarize(rows, cmd, INTERVAL, "official")
        write_efficiency_reports(rows, summary, out)
        results[name] = (rows, summary)
    text = settings + "\n\n" + table(results)
    write_report(text, args.out / "flare_efficiency.md", overwrite=args.overwrite)
    return 0 if all(s["n_failed"] == 0 for _, s in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "flare_efficiency"))
