"""stage-6: ship the coarse model: predict the held-out validation set with the fast predictor
(window skipping on), evaluate DSC/NSD under the FLARE23 rules, and measure per-case efficiency
the way the FLARE harness does (one ``flareseg predict`` process per case: start-up, model load,
wall time, CPU RSS, GPU memory when there is a GPU)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from flareseg.config import to_dict
from flareseg.io import write_image, write_json
from flareseg.pipeline.stage import StageContext, StageError

log = logging.getLogger(__name__)


def case_seconds(step_seconds: dict) -> float:
    """Wall seconds of one prediction from the predictor's per-step timings: its ``total`` entry
    (each lap also rewrites ``total``, so summing every entry would count the case twice); the
    sum of the steps only when there is no ``total``."""
    if "total" in step_seconds:
        return float(step_seconds["total"])
    return float(sum(step_seconds.values()))


def run(ctx: StageContext) -> dict:
    from flareseg.evaluation.efficiency import measure_efficiency, summarize, write_efficiency_reports
    from flareseg.evaluation.evaluate import evaluate_folders
    from flareseg.evaluation.report import format_table, summary_dict
    from flareseg.inference.commands import collect_inputs
    from flareseg.inference.predictor import FastPredictor

    cfg = ctx.cfg
    s1, s5 = ctx.upstream(1)["result"], ctx.upstream(5)["result"]
    if not s1.get("validation_images") or not s1.get("validation_labels"):
        raise StageError("no validation set: set data.validation_images and data.validation_labels")
    val_imgs, val_labs = Path(s1["validation_images"]), Path(s1["validation_labels"])
    model_dir = Path(s5["model_dir"])
    pred_dir = ctx.dir / "predictions"
    cases = collect_inputs(val_imgs)

    def predict_all() -> dict:
        predictor = FastPredictor.from_config(model_dir, cfg.inference)
        per_case = {}
        for name, path in cases:
            dest = pred_dir / f"{name}.nii.gz"
            pred = predictor.run(path)
            write_image(pred.labels, dest)
            w = pred.stats["windows"]
            per_case[name] = {"seconds": round(case_seconds(pred.stats["seconds"]), 3), "windows": w}
        tot = sum(v["windows"]["windows_total"] for v in per_case.values())
        skipped = sum(v["windows"]["windows_skipped"] for v in per_case.values())
        return {"cases": per_case, "windows_total": tot, "windows_skipped": skipped}

    predicted = ctx.step("predict", {"model": s5["training"]["checkpoint"], "inference": to_dict(cfg.inference),
                                     "cases": [str(p) for _, p in cases]}, predict_all,
                         outputs=[pred_dir / f"{n}.nii.gz" for n, _ in cases])
    res = evaluate_folders(pred_dir, val_labs, cfg.evaluation, out_dir=ctx.dir / "evaluation")
    table = format_table(res)
    (ctx.dir / "evaluation").mkdir(parents=True, exist_ok=True)
    log.info("validation results:\n%s", table)

    def efficiency() -> dict:
        cmd = [sys.executable, "-m", "flareseg.cli", "predict", "-i", "{input}", "-o", "{output}",
               "-m", str(model_dir), "--device", cfg.inference.device, "--dtype", cfg.inference.dtype, "-q"]
        if not cfg.inference.skip_windows:
            cmd.append("--no-skip")
        rows = measure_efficiency(cmd, [p for _, p in cases], ctx.dir / "efficiency")
        summ = summarize(rows, cmd)
        write_efficiency_reports(rows, summ, ctx.dir / "efficiency")
        failed = [r["case"] for r in rows if r["returncode"] != 0]
        if failed:
            raise StageError(f"flareseg predict failed for {failed}; see {ctx.dir / 'efficiency' / 'logs'}")
        return summ

    eff = ctx.step("efficiency", {"model": s5["training"]["checkpoint"], "inference": to_dict(cfg.inference),
                                  "cases": [str(p) for _, p in cases]}, efficiency,
                   outputs=[ctx.dir / "efficiency"])
    summary = summary_dict(res, cfg.evaluation)
    write_json({"evaluation": summary, "prediction": predicted, "efficiency": eff},
               ctx.dir / "ship_report.json")
    return {"evaluation": summary, "windows_total": predicted["windows_total"],
            "windows_skipped": predicted["windows_skipped"], "efficiency": eff, "table": table,
            "outputs": [pred_dir, ctx.dir / "evaluation", ctx.dir / "ship_report.json"]}
