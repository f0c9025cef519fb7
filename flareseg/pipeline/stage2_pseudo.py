"""stage-2: pseudo labels for unlabeled scans, uncertainty ranking and selection, and organ
fill-in of tumor-only cases, all with the stage-1 fine model.

Per unlabeled case the fast predictor keeps the softmax on the device, where organ and tumor
uncertainty are computed; only the argmax pseudo label is written (``raw/``), then the scores
(``scores/``), so a killed run resumes at the next case.  Extra uncertainty members (other models
or checkpoints, mirrored TTA, external label folders) join through
:mod:`flareseg.pseudolabel.members`.  ``pseudolabel.shard = i/N`` scores only
this shard's cases (run N jobs, then one ``0/1`` run merges and selects).  Selection writes the
final labels of the K1 selected cases (``pseudo_labels/``) with their label types, and
``training_additions.json`` lists everything stage-4/5 add to the training set.

Settings (:func:`stage2_inference`): the fine model predicts with the ``inference`` section, except
mirroring, which ``pseudolabel.tta`` alone decides (``inference.tta`` is the shipped predictor's:
stage-6 and the model folder), and deterministic on; when the two ``tta`` keys differ the stage says
which one it follows.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flareseg.config import Config, ConfigError, InferenceConfig
from flareseg.io import read_array, read_json, write_array, write_json
from flareseg.labels import ORGANS, TUMOR, label_type
from flareseg.pipeline.stage import StageContext, StageError, StagePaused

log = logging.getLogger(__name__)


def stage2_inference(cfg: Config) -> InferenceConfig:
    """The settings stage-2's predictors run with: ``cfg.inference`` with ``tta`` from
    ``pseudolabel.tta`` (pseudo-labelling mirrors or not on its own key, whatever the shipped
    predictor does) and ``deterministic`` on (on CUDA no cuDNN autotuning: the selection must not
    depend on how many GPUs or processes scored the cases)."""
    return dataclasses.replace(cfg.inference, tta=cfg.pseudolabel.tta, deterministic=True)


def tta_note(cfg: Config) -> str | None:
    """The line stage-2 logs when ``inference.tta`` and ``pseudolabel.tta`` differ (None when not)."""
    if cfg.inference.tta == cfg.pseudolabel.tta:
        return None
    return (f"stage-2 predicts {'with' if cfg.pseudolabel.tta else 'without'} mirroring (pseudolabel.tta: "
            f"{str(cfg.pseudolabel.tta).lower()}); inference.tta: {str(cfg.inference.tta).lower()} applies to "
            "stage-6 and the shipped model only")


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr
    r = spearmanr(a, b).statistic
    return None if not math.isfinite(r) else round(float(r), 4)


def pseudo_label_quality(selection, raw_dir: Path, gt_dir: Path) -> dict:
    """With hidden ground truth (phantoms): true organ Dice of each raw pseudo label, its rank
    correlation with organ uncertainty, and mean Dice of selected vs rejected cases."""
    from flareseg.evaluation.metrics import dice
    rows = []
    for s in selection:
        gt_p = gt_dir / f"{s.case_id}.nii.gz"
        if not gt_p.exists() or s.organ_score is None:
            continue
        pred, _ = read_array(raw_dir / f"{s.case_id}.nii.gz")
        gt, _ = read_array(gt_p)
        d = [dice(pred == c, gt == c) for c in ORGANS if (gt == c).any()]
        rows.append((s.case_id, s.organ_score, float(np.mean(d)), s.selected))
    if not rows:
        return {}
    sel = [r[2] for r in rows if r[3]]
    rej = [r[2] for r in rows if not r[3]]
    return {"cases": len(rows),
            "spearman_organ_uncertainty_vs_dice": _spearman([r[1] for r in rows], [r[2] for r in rows]),
            "mean_organ_dice_selected": round(float(np.mean(sel)), 4) if sel else None,
            "mean_organ_dice_rejected": round(float(np.mean(rej)), 4) if rej else None,
            "per_case": [{"case_id": c, "organ_uncertainty": u, "organ_dice": round(d, 4), "selected": s}
                         for c, u, d, s in rows]}


def run(ctx: StageContext) -> dict:
    """Under torchrun every rank scores its hash shard of the unlabeled cases on its own device;
    rank 0 alone merges, selects, writes pseudo labels, fill-ins and the report."""
    from flareseg import distributed as dist
    from flareseg.inference.predictor import FastPredictor
    from flareseg.pseudolabel.fill_in import fill_in
    from flareseg.pseudolabel.members import check_members, make_scorer, score_fingerprint
    from flareseg.pseudolabel.report import write_report
    from flareseg.pseudolabel.selection import final_label, select
    from flareseg.pseudolabel.shards import merge_scores, parse_shard, run_shard

    cfg, pc = ctx.cfg, ctx.cfg.pseudolabel
    s1 = ctx.upstream(1)["result"]
    ds = Path(s1["dataset"])
    model_dir = Path(s1["model_dir"])
    pools = read_json(ds / "cases.json")
    types = {k: label_type(v) for k, v in read_json(ds / "label_types.json").items()}
    unlabeled = pools["unlabeled"]
    raw_dir, scores_dir = ctx.dir / "raw", ctx.dir / "scores"
    try:
        check_members(pc)
    except ConfigError:
        raise                           # a key combination that cannot work: exit 2
    except ValueError as e:
        raise StageError(str(e)) from None
    inference = stage2_inference(cfg)
    note = tta_note(cfg)
    if note:
        log.info("%s", note)
    predictor = FastPredictor(model_dir, inference)
    fingerprint = score_fingerprint(s1["training"]["checkpoint"], cfg.inference, pc)

    def image_of(cid: str) -> Path:
        return ds / "imagesUnlabeled" / f"{cid}_0000.nii.gz"

    scorer = make_scorer(predictor, pc, inference, image_of, raw_dir)
    i, n = parse_shard(pc.shard)
    if dist.world_size() > 1:
        # torchrun: rank r scores hash shard r/world; rank 0 merges and selects once all have finished
        if n > 1:
            raise ConfigError(f"key 'pseudolabel.shard'={pc.shard}: hand-made shards and torchrun "
                              "(WORLD_SIZE > 1) do not combine; use one or the other")
        i, n = dist.rank(), dist.world_size()
        summary = run_shard(unlabeled, scorer, scores_dir, i, n, fingerprint=fingerprint)
        failed = {}
        for f in dist.gather(summary.failed):
            failed.update(f)
        summary.failed = failed
        if not dist.is_main():
            return {"outputs": []}
        i, n = 0, 1
    else:
        summary = run_shard(unlabeled, scorer, scores_dir, i, n, fingerprint=fingerprint)
    if n > 1:
        raise StagePaused(f"shard {pc.shard} finished ({len(summary.computed)} scored, {len(summary.skipped)} "
                         f"already done, {len(summary.failed)} failed); run again with "
                         f"--set pseudolabel.shard=0/1 after all shards to merge and select")
    scores = merge_scores(scores_dir, unlabeled, fingerprint)
    selection = select(scores, pc) if scores else []

    additions: dict[str, dict] = {}
    pseudo_dir = ctx.dir / "pseudo_labels"
    for s in selection:
        if not s.selected:
            continue
        dest = pseudo_dir / f"{s.case_id}.nii.gz"
        if not dest.exists():
            lab, geo = read_array(raw_dir / f"{s.case_id}.nii.gz")
            write_array(final_label(lab, s), geo, dest)
        additions[s.case_id] = {"image": str(image_of(s.case_id)), "label": str(dest),
                                "label_type": list(s.label_type), "source": "pseudo"}

    filled_dir = ctx.dir / "filled"
    fill_cases = [c for c, t in sorted(types.items())
                  if pc.fill_in_organs and set(ORGANS) - set(t)
                  and (t == (TUMOR,) or pc.fill_in_partial)]
    for cid in fill_cases:
        dest = filled_dir / f"{cid}.nii.gz"
        img_p = ds / "imagesTr" / f"{cid}_0000.nii.gz"
        rec_p = filled_dir / f"{cid}.json"
        if not (dest.exists() and rec_p.exists()):
            ann, geo = read_array(ds / "labelsTr" / f"{cid}.nii.gz")
            pred = predictor.run(img_p)
            lab, new_type = fill_in(ann, types[cid], sitk.GetArrayFromImage(pred.labels))
            write_array(lab.astype(np.uint8), geo, dest)
            write_json({"label_type": list(new_type)}, rec_p)
        additions[cid] = {"image": str(img_p), "label": str(dest),
                          "label_type": read_json(rec_p)["label_type"], "source": "filled"}
    write_json(additions, ctx.dir / "training_additions.json")

    def load_case(cid):
        img, _ = read_array(image_of(cid))
        lab, _ = read_array(raw_dir / f"{cid}.nii.gz")
        return img, lab
    report_files = (write_report(ctx.dir / "report", scores, selection, pc.score, load_case,
                                 tumor_score=pc.tumor_score or pc.score) if selection else [])
    quality = {}
    gt_dir = s1.get("hidden_gt")
    if gt_dir and Path(gt_dir).exists():
        quality = pseudo_label_quality(selection, raw_dir, Path(gt_dir))
        write_json(quality, ctx.dir / "report" / "pseudo_label_quality.json")
    n_sel = sum(s.selected for s in selection)
    return {"unlabeled": len(unlabeled), "scored": len(scores), "failed": len(summary.failed),
            "selected": n_sel, "tumor_kept": sum(s.keep_tumor for s in selection),
            "filled": len(fill_cases), "pseudo_dir": str(pseudo_dir), "filled_dir": str(filled_dir),
            "training_additions": str(ctx.dir / "training_additions.json"),
            "quality": {k: v for k, v in quality.items() if k != "per_case"},
            "report_files": [str(p) for p in report_files],
            "outputs": [ctx.dir / "training_additions.json", ctx.dir / "report"]}
