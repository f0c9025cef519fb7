"""stage-5: the coarse model, trained on ground truth + selected pseudo labels (cleaned by
stage-4) with online context-aware CutMix from the stage-3 pool.

The coarse training set becomes its own nnU-Net dataset (id = data.dataset_id + 1) inside this
stage's folder; it reuses stage-1's plans (the *coarse* configuration and its intensity
statistics, so the CTO pool and training data are normalised alike) and is preprocessed for
``coarse`` only.
"""
from __future__ import annotations

import logging
from pathlib import Path

from flareseg.config import to_dict
from flareseg.data.intake import dataset_folder_name, dataset_json
from flareseg.io import link_or_copy, read_json, write_json, write_text
from flareseg.nnunet.env import NNUNetPaths
from flareseg.pipeline.stage import StageContext, StageError

log = logging.getLogger(__name__)


def build_dataset(training_set: dict[str, dict], ds_dir: Path) -> dict[str, list[int]]:
    """nnU-Net raw dataset from ``{case: {image, label, label_type}}``; returns the label types."""
    types = {}
    for cid, rec in sorted(training_set.items()):
        img, lab = ds_dir / "imagesTr" / f"{cid}_0000.nii.gz", ds_dir / "labelsTr" / f"{cid}.nii.gz"
        if not img.exists():
            link_or_copy(Path(rec["image"]), img)
        link_or_copy(Path(rec["label"]), lab)
        types[cid] = list(rec["label_type"])
    write_json(types, ds_dir / "label_types.json")
    write_json(dataset_json(len(types)), ds_dir / "dataset.json")
    return types


def run(ctx: StageContext) -> dict:
    from flareseg import distributed as dist
    from flareseg.nnunet.training import model_folder, train, train_key

    cfg = ctx.cfg
    s1 = ctx.upstream(1)["result"]
    s3 = ctx.upstream(3)["result"]
    s4 = ctx.upstream(4)["result"]
    training_set = read_json(s4["training_set"])
    if not training_set:
        raise StageError("stage-4 produced an empty training set")
    paths = NNUNetPaths.under(ctx.dir)
    paths.export()
    ds_id = cfg.data.dataset_id + 1
    ds_name = dataset_folder_name(ds_id, cfg.data.dataset_name + "Coarse")
    ds_dir = paths.raw / ds_name
    pre = paths.preprocessed / ds_name

    def prepare() -> dict:
        from flareseg.nnunet.planning import place_label_types, preprocess
        types = build_dataset(training_set, ds_dir)
        plans = read_json(Path(s1["preprocessed"]) / "nnUNetPlans.json")
        plans["dataset_name"] = ds_name
        pre.mkdir(parents=True, exist_ok=True)
        write_json(plans, pre / "nnUNetPlans.json")
        # stage-1's fingerprint: same intensity statistics as the plans (and the CTO pool);
        # copied atomically (temporary file renamed), so a kill never leaves half a JSON behind
        for src in (ds_dir / "dataset.json", Path(s1["preprocessed"]) / "dataset_fingerprint.json"):
            write_text(src.read_text(), pre / src.name)
        place_label_types(ds_dir, pre)
        preprocess(ds_id, ("coarse",), cfg.data.num_processes)
        return {"cases": len(types)}

    prepared = ctx.step("prepare", {"set": training_set, "plans_from": s1["preprocessed"]}, prepare,
                        outputs=[pre / "nnUNetPlans.json"])

    def do_train() -> dict:
        # the trainer reads CutMix settings (and the pool path) from the plans, like its other settings
        return train(ds_name, "coarse", cfg.train_coarse, paths.preprocessed, paths.results,
                     extra={"cutmix": {**to_dict(cfg.cutmix), "pool": s3["pool_dir"]}},
                     log_dir=ctx.dir / "logs")

    mdir = model_folder(paths.results, ds_name, "coarse")
    ck = mdir / f"fold_{cfg.train_coarse.fold}" / "checkpoint_final.pth"
    trained = ctx.step("train", {"train": train_key(cfg.train_coarse), "cutmix": to_dict(cfg.cutmix),
                                 "prepared": prepared, "pool": s3.get("objects")}, do_train, outputs=[ck],
                       collective=True)
    gallery = ctx.dir / "qc" / "cutmix_samples.png"
    if dist.is_main() and not gallery.exists():
        cutmix_gallery_png(training_set, pre / "nnUNetPlans_coarse", s3["pool_dir"], cfg, gallery)
    return {"dataset": str(ds_dir), "model_dir": str(mdir), "training": trained,
            "cutmix_gallery": str(gallery) if gallery.exists() else None, "outputs": [ck]}


def cutmix_gallery_png(training_set: dict, pre_dir: Path, pool_dir: str, cfg, dest: Path, n: int = 4) -> None:
    """QC: CutMix applied (as in training) to a few preprocessed cases without tumor labels."""
    import numpy as np
    from flareseg.cto.cutmix import apply, object_infos, sample_params
    from flareseg.cto.gallery import cutmix_gallery
    from flareseg.cto.pool import load_pool
    from flareseg.labels import TUMOR
    from flareseg.nnunet.planning import load_preprocessed

    pool = load_pool(pool_dir)
    keys = sorted(c for c, r in training_set.items() if TUMOR not in r["label_type"])[:n]
    if not keys or not len(pool.ids):
        return
    from flareseg.nnunet.plans import normalizer
    rng = np.random.default_rng(cfg.seed)
    spacing = pool.spacing_zyx
    infos = object_infos(pool, {c: r["label_type"] for c, r in training_set.items()})
    body = float(normalizer(pre_dir.parent / "nnUNetPlans.json", "coarse")(np.array([[[-500.0]]])).ravel()[0])
    tiles = []
    for key, img, seg in load_preprocessed(pre_dir, keys):   # as the training loader does
        p = sample_params(rng, seg, pool.ids, spacing, cfg.cutmix, image=img, body_threshold=body,
                          sample_type=training_set[key]["label_type"], objects=infos)
        img2, seg2 = apply(p, img, seg, pool, air_threshold=body)
        tiles.append((f"{key} + {', '.join(x.object_id for x in p.pastes) or 'no paste'}", img2[0], seg2[0]))
    cutmix_gallery(tiles, dest)
