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
from flareseg.nnunet.env import (NNUNetPaths, model_folder, plans_file, preprocessed_data, preprocessed_dataset,
                                 raw_dataset)
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
    from flareseg.nnunet.training import train, train_key

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
    ds_dir = raw_dataset(paths.raw, ds_name)
    pre = preprocessed_dataset(paths.preprocessed, ds_name)

    def prepare() -> dict:
        from flareseg.nnunet.planning import place_label_types, preprocess
        types = build_dataset(training_set, ds_dir)
        plans = read_json(plans_file(s1["preprocessed"]))
        plans["dataset_name"] = ds_name
        pre.mkdir(parents=True, exist_ok=True)
        write_json(plans, plans_file(pre))
        # stage-1's fingerprint: same intensity statistics as the plans (and the CTO pool);
        # copied atomically (temporary file renamed), so a kill never leaves half a JSON behind
        for src in (ds_dir / "dataset.json", Path(s1["preprocessed"]) / "dataset_fingerprint.json"):
            write_text(src.read_text(), pre / src.name)
        place_label_types(ds_dir, pre)
        preprocess(ds_id, ("coarse",), cfg.data.num_processes)
        return {"cases": len(types)}

    prepared = ctx.step("prepare", {"set": training_set, "plans_from": s1["preprocessed"]}, prepare,
                        outputs=[plans_file(pre)])

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
    counts = cutmix_counts(ck.parent, cfg.cutmix.probability)
    gallery = ctx.dir / "qc" / "cutmix_samples.png"
    searched = None
    if dist.is_main() and not gallery.exists():
        searched = cutmix_gallery_png(training_set, preprocessed_data(pre, "coarse"), s3["pool_dir"], cfg, gallery)
    return {"dataset": str(ds_dir), "model_dir": str(mdir), "training": trained, "cutmix": counts,
            "cutmix_gallery_search": searched,
            "cutmix_gallery": str(gallery) if gallery.exists() else None, "outputs": [ck]}


def cutmix_counts(fold_dir: Path, probability: float = 1.0) -> dict | None:
    """The run's CutMix totals (``cutmix_counts.json`` the trainer writes per epoch, rank 0's samples
    under DDP) with the paste rate and ``cutmix.probability``, logged; a rate below
    ``MIN_PASTE_RATE`` of what the probability implies is a WARNING.  None when the run had no
    CutMix (no pool objects)."""
    from flareseg.cto.cutmix import paste_rate_warning
    from flareseg.nnunet.trainer import CUTMIX_COUNTS_FILE
    path = fold_dir / CUTMIX_COUNTS_FILE
    if not path.is_file():
        return None
    total = dict(read_json(path).get("total") or {}) | {"probability": float(probability)}
    if total.get("eligible"):
        total["paste_rate"] = round(total.get("pasted", 0) / total["eligible"], 4)
    log.info("CutMix over the run: %s of %s eligible samples pasted, %s with tumor in the final patch, "
             "%s without a fitting location", total.get("pasted"), total.get("eligible"),
             total.get("reached_patch"), total.get("no_fit"))
    warning = paste_rate_warning(total)
    if warning:
        log.warning("%s", warning)
    return total


def gallery_crop(rng, shape, patch) -> tuple[slice, ...]:
    """A random ``patch``-sized box inside ``shape`` (clipped where the case is smaller): the kind of
    crop the training loader hands to CutMix, for the QC picture."""
    out = []
    for n, p in zip(shape, patch):
        p = min(int(p), int(n))
        lo = int(rng.integers(0, int(n) - p + 1))
        out.append(slice(lo, lo + p))
    return tuple(out)


def cutmix_gallery_png(training_set: dict, pre_dir: Path, pool_dir: str, cfg, dest: Path, n: int = 4,
                       max_draws: int = 200) -> dict:
    """QC: CutMix applied as in training (patch-sized crops of preprocessed cases without tumor
    labels, body threshold and pool objects as the trainer uses them) until ``n`` samples got a
    paste or ``max_draws`` samples were tried; the picture's titles say how many were searched.
    Returns ``{"searched", "pasted"}``."""
    import numpy as np
    from flareseg.cto.cutmix import apply, object_infos, sample_params
    from flareseg.cto.gallery import cutmix_gallery
    from flareseg.cto.pool import load_pool
    from flareseg.labels import TUMOR
    from flareseg.nnunet.planning import load_preprocessed
    from flareseg.nnunet.plans import body_threshold, configuration

    pool = load_pool(pool_dir)
    keys = sorted(c for c, r in training_set.items() if TUMOR not in r["label_type"])
    if not keys or not len(pool.ids):
        return {"searched": 0, "pasted": 0}
    plans = read_json(plans_file(pre_dir.parent))
    patch = configuration(plans, "coarse")["patch_size"]
    body = body_threshold(plans, "coarse")
    rng = np.random.default_rng(cfg.seed)
    infos = object_infos(pool, {c: r["label_type"] for c, r in training_set.items()})
    cases = load_preprocessed(pre_dir, keys[:16])
    tiles, searched = [], 0
    while len(tiles) < n and searched < max_draws:
        key, img, seg = cases[searched % len(cases)]
        searched += 1
        box = (slice(None),) + gallery_crop(rng, seg.shape[1:], patch)
        ci, cs = img[box], seg[box]
        p = sample_params(rng, cs, pool.ids, pool.spacing_zyx, cfg.cutmix, image=ci, body_threshold=body,
                          sample_type=training_set[key]["label_type"], objects=infos)
        if not p.applied:
            continue
        img2, seg2 = apply(p, ci, cs, pool, air_threshold=body)
        tiles.append((f"{key} + {', '.join(x.object_id for x in p.pastes)}", img2[0], seg2[0]))
    if tiles:
        tiles[0] = (f"{tiles[0][0]}\n{len(tiles)} pasted of {searched} samples searched", *tiles[0][1:])
        cutmix_gallery(tiles, dest)
    else:
        log.warning("CutMix QC picture: no paste in %d training-like samples; %s not written", searched, dest)
    return {"searched": searched, "pasted": len(tiles)}
