"""stage-6: ship the coarse model: export it as a model folder stock nnU-Net loads as it is
(``stage-6-*/model``, what ``flareseg export-model`` writes and the Docker image bakes in) with the
stage's resolved ``inference`` settings inside (``flareseg_inference.json``: ``flareseg predict``,
the API, the Docker entry point and the benches start from them), then
predict the held-out validation set once with that folder, the way the FLARE
harness runs a submission (one ``flareseg predict`` process per case, measuring start-up, model
load, wall time, CPU RSS, GPU memory when there is a GPU), then evaluate those very outputs
(DSC/NSD under the FLARE23 rules).  The processes get the stage's resolved ``inference`` config
as a file (``--config``), so the efficiency table measures the predictor that is evaluated; each
process's run report lists the config it ran with, and the stage checks it against its own.

GPU memory is the used memory of the card the processes run on (``CUDA_VISIBLE_DEVICES`` mapped to
the physical card, named in the summary's ``gpu_card``).  When the pipeline process itself holds a
CUDA context (stage-5 trained in this process), that context's memory sits on the card during every
case: the summary says so (``gpu_parent_context``), and the per-case baseline measured just before
each process starts is subtracted in ``gpu_max_net_mb`` / ``gpu_auc_net_mb_s``.  For the official
figures with nothing else on the card, run stage 6 in a process of its own
(``python -m flareseg.pipeline 6 ...``) or use ``flareseg efficiency`` (docs/benchmarks.md)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import yaml

from flareseg.config import to_dict
from flareseg.io import read_json, write_json, write_text
from flareseg.pipeline.stage import StageContext, StageError

log = logging.getLogger(__name__)


def case_seconds(step_seconds: dict) -> float:
    """Wall seconds of one prediction from the predictor's per-step timings: its ``total`` entry
    (each lap also rewrites ``total``, so summing every entry would count the case twice); the
    sum of the steps only when there is no ``total``."""
    if "total" in step_seconds:
        return float(step_seconds["total"])
    return float(sum(step_seconds.values()))


def efficiency_command(model_dir: Path, settings: Path, reports: Path) -> list[str]:
    """The ``flareseg predict`` command of one efficiency run (``{input}``, ``{output_dir}``, ``{case}``
    are filled per case): label map ``<case>.nii.gz``, the model, the inference settings file, a run
    report per case."""
    return [sys.executable, "-m", "flareseg.cli", "predict", "-i", "{input}", "-o", "{output_dir}/{case}.nii.gz",
            "-m", str(model_dir), "--config", str(settings), "--report", str(reports / "{case}.json"), "-q"]


def run(ctx: StageContext) -> dict:
    from flareseg.evaluation.efficiency import measure_efficiency, summarize, write_efficiency_reports
    from flareseg.evaluation.evaluate import evaluate_folders
    from flareseg.evaluation.report import format_table, summary_dict
    from flareseg.inference.commands import collect_inputs

    cfg = ctx.cfg
    s1, s5 = ctx.upstream(1)["result"], ctx.upstream(5)["result"]
    if not s1.get("validation_images") or not s1.get("validation_labels"):
        raise StageError("no validation set: set data.validation_images and data.validation_labels")
    val_imgs, val_labs = Path(s1["validation_images"]), Path(s1["validation_labels"])
    model_dir = Path(s5["model_dir"])
    pred_dir, eff_dir = ctx.dir / "predictions", ctx.dir / "efficiency"
    settings, reports = eff_dir / "inference.yaml", eff_dir / "reports"
    cases = collect_inputs(val_imgs)
    inference = to_dict(cfg.inference)

    ship_dir = ctx.dir / "model"

    def export() -> dict:
        from flareseg.config import ConfigError, config_hash
        from flareseg.nnunet.export import export_model
        from flareseg.nnunet.model import ModelFolderError
        from flareseg.io import InputError
        from flareseg.write_guard import UnsafeOutput
        try:
            # the stage folder is the pipeline's (checked before the stage ran: its ledger or, for a
            # copied work folder, its config.resolved.json), so its model/ may be replaced
            export_model(model_dir, ship_dir, inference=inference, overwrite=True,
                         settings_source=f"stage-6 of {ctx.work} (config {config_hash(cfg)})")
        except (InputError, ModelFolderError, UnsafeOutput, ConfigError) as e:
            raise StageError(f"export of the coarse model: {e}") from None
        return {"model": str(ship_dir)}

    # the shipped folder (stock-loadable, no nnUNet_extTrainer needed; the Docker image's /opt/model)
    # is the one measured and evaluated below, with the settings it carries
    from flareseg.inference.model_settings import settings_path
    ctx.step("export", {"model": s5["training"]["checkpoint"], "inference": inference}, export,
             outputs=[ship_dir / "flareseg_export.json", settings_path(ship_dir)])

    def predict_and_measure() -> dict:
        write_text(yaml.safe_dump({"inference": inference}, sort_keys=False), settings)
        cmd = efficiency_command(ship_dir, settings, reports)
        try:
            rows = measure_efficiency(cmd, [p for _, p in cases], eff_dir, outputs_dir=pred_dir)
        except ValueError as e:   # CUDA_VISIBLE_DEVICES names no card: the wrong card would be sampled
            raise StageError(f"efficiency: {e}") from None
        summ = summarize(rows, cmd)
        write_efficiency_reports(rows, summ, eff_dir)
        failed = [r["case"] for r in rows if r["returncode"] != 0]
        if failed:
            raise StageError(f"flareseg predict failed for {failed}; see {eff_dir / 'logs'}")
        per_case = {}
        for r in rows:
            rep = read_json(reports / f"{r['case']}.json")
            if rep.get("inference") != inference:   # the run must have used the stage's settings
                raise StageError(f"{reports / (r['case'] + '.json')}: flareseg predict ran with inference "
                                 f"{rep.get('inference')}, not the stage's {inference}")
            c = rep["cases"][0]
            per_case[r["case"]] = {"seconds": round(case_seconds(c["steps"]), 3), "wall_s": r["wall_s"],
                                   "windows": c["windows"], "output": c["output"]}
        tot = sum(v["windows"]["windows_total"] for v in per_case.values())
        skipped = sum(v["windows"]["windows_skipped"] for v in per_case.values())
        return {"efficiency": summ,
                "prediction": {"cases": per_case, "windows_total": tot, "windows_skipped": skipped}}

    # one step: the efficiency outputs are the predictions evaluated (nothing is predicted twice)
    done = ctx.step("predict_measure", {"model": s5["training"]["checkpoint"], "inference": inference,
                                "cases": [str(p) for _, p in cases]}, predict_and_measure,
                    outputs=[pred_dir / f"{n}.nii.gz" for n, _ in cases] + [eff_dir / "efficiency.json"])
    predicted, eff = done["prediction"], done["efficiency"]
    res = evaluate_folders(pred_dir, val_labs, cfg.evaluation, out_dir=ctx.dir / "evaluation")
    table = format_table(res)
    (ctx.dir / "evaluation").mkdir(parents=True, exist_ok=True)
    log.info("validation results:\n%s", table)
    summary = summary_dict(res, cfg.evaluation)
    external = external_scan(ctx, ship_dir, inference)
    write_json({"evaluation": summary, "prediction": predicted, "efficiency": eff, "external": external},
               ctx.dir / "ship_report.json")
    return {"evaluation": summary, "external": external, "windows_total": predicted["windows_total"],
            "windows_skipped": predicted["windows_skipped"], "efficiency": eff, "table": table,
            "model": str(ship_dir),
            "outputs": [ship_dir, pred_dir, ctx.dir / "evaluation", eff_dir, ctx.dir / "ship_report.json"]}


def external_scan(ctx: StageContext, model: Path, inference: dict) -> dict | None:
    """``evaluation.external_image`` / ``external_labels`` predicted by the shipped ``model`` with the
    stage's settings and scored per FLARE organ class (DSC against the labels on the image's grid;
    ``None`` where a class is in neither).  ``None`` when not configured; ``{"skipped": why}`` when a
    file is missing or unusable (the run goes on)."""
    ev = ctx.cfg.evaluation
    if not ev.external_image or not ev.external_labels:
        return None
    image, labels = Path(ev.external_image), Path(ev.external_labels)
    missing = [str(p) for p in (image, labels) if not p.is_file()]
    if missing:
        log.warning("stage-6: external scan skipped: %s not found", ", ".join(missing))
        return {"image": str(image), "labels": str(labels), "skipped": f"not found: {', '.join(missing)}"}

    def score() -> dict:
        import SimpleITK as sitk
        from flareseg.data.validate import check_case
        from flareseg.evaluation.metrics import class_dsc
        from flareseg.inference.predictor import FastPredictor
        from flareseg.io import InputError
        from flareseg.labels import CLASS_NAMES
        try:   # the import's checks: a CT, labels in range and on the image's grid (re-gridded if flipped)
            case = check_case(image, labels)
            pred = sitk.GetArrayFromImage(FastPredictor(model, **inference).predict(case.image))
        except InputError as e:
            log.warning("stage-6: external scan skipped: %s", e)
            return {"image": str(image), "labels": str(labels), "skipped": str(e)}
        scores = class_dsc(pred, sitk.GetArrayFromImage(case.label))
        per_class = {str(c): {"name": CLASS_NAMES[c], **v, "dsc": None if v["dsc"] is None else round(v["dsc"], 4)}
                     for c, v in scores.items()}
        return {"image": str(image), "labels": str(labels), "per_class": per_class}
    stamps = [[str(p), st.st_size, st.st_mtime_ns] for p in (image, labels) for st in (p.stat(),)]
    return ctx.step("external", {"model": str(model), "inference": inference, "files": stamps}, score)

