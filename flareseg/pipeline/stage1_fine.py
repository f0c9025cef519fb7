"""stage-1: data (phantoms or FLARE folders) -> validated nnU-Net dataset -> fine/coarse plans and
preprocessing -> fine model (merge-max loss, label-type batches)."""
from __future__ import annotations

import logging
from pathlib import Path

from flareseg.config import Config, to_dict
from flareseg.data.intake import dataset_folder_name, import_dataset
from flareseg.data.sources import ImportConfigError
from flareseg.io import read_json
from flareseg.nnunet.env import NNUNetPaths, model_folder, plans_file, preprocessed_dataset, raw_dataset
from flareseg.pipeline.stage import StageContext, StageError

log = logging.getLogger(__name__)


def data_sources(cfg: Config, stage_dir: Path) -> dict[str, Path | None]:
    """Where the raw labeled/unlabeled/validation data of this run live."""
    d = cfg.data
    if d.source == "phantoms":
        ph = stage_dir / "phantoms"
        return {"images": ph / "imagesTr", "labels": ph / "labelsTr", "unlabeled": ph / "unlabeledTr",
                "manifest": ph / "manifest.csv", "validation_images": ph / "imagesVal",
                "validation_labels": ph / "labelsVal", "hidden_gt": ph / "hidden_gt",
                "label_types": Path(d.label_types) if d.label_types else None}
    missing = [k for k in ("labeled_images", "labels") if getattr(d, k) is None]
    if missing:
        raise StageError(f"config data.source=folders needs data.{missing[0]} (a folder path)")
    p = lambda v: Path(v) if v else None  # noqa: E731
    return {"images": p(d.labeled_images), "labels": p(d.labels), "unlabeled": p(d.unlabeled_images),
            "manifest": p(d.manifest), "label_types": p(d.label_types), "validation_images": p(d.validation_images),
            "validation_labels": p(d.validation_labels), "hidden_gt": None}


def nnunet_paths(stage_dir: Path) -> NNUNetPaths:
    return NNUNetPaths.under(stage_dir)


def write_phantom_data(cfg: Config, stage_dir: Path) -> dict:
    """Data step ``phantoms``: the synthetic cases of ``data.phantoms`` under ``stage_dir/phantoms``."""
    from flareseg.data.phantoms import write_phantoms
    ph = stage_dir / "phantoms"
    return {"cases": len(write_phantoms(ph, cfg.data.phantoms, workers=cfg.data.num_processes).get("cases", {}))}


def import_data(cfg: Config, src: dict[str, Path | None], ds_dir: Path) -> dict:
    """Data step ``import``: validate and import ``src`` (:func:`data_sources`) as nnU-Net dataset
    ``ds_dir``; StageError when the inputs are unusable or no case is valid."""
    try:   # import_dataset logs each bad case itself; unusable inputs become one stage error
        rep = import_dataset(ds_dir, src["images"], src["labels"], src["unlabeled"], src["manifest"],
                             num_processes=cfg.data.num_processes, types_override=src["label_types"],
                             reorient=cfg.data.reorient)
    except ImportConfigError as e:
        raise StageError("import refused: " + "; ".join(e.problems)) from None
    if not rep.good:
        raise StageError(f"stage-1: no valid case imported from {src['images']}")
    for line in rep.type_lines():   # the label types the model will train with, right after import
        log.info("%s", line)
    return {"ok": len(rep.good), "bad": len(rep.bad), "label_type_source": rep.label_type_source}


def plan_data(cfg: Config, ds_dir: Path, configurations: tuple[str, ...] = ("fine", "coarse"),
              preprocess: tuple[str, ...] | None = None) -> dict:
    """Data step ``plan_preprocess``: fingerprint, plans with our ``configurations``, preprocessing
    of ``preprocess`` (default: every configuration), and ``label_types.json`` next to the plans
    (nnU-Net's folders exported)."""
    from flareseg.nnunet.planning import place_label_types, plan_and_preprocess
    wanted = {"fine": cfg.fine, "coarse": cfg.coarse}
    pf = plan_and_preprocess(cfg.data.dataset_id, {c: wanted[c] for c in configurations},
                             num_processes=cfg.data.num_processes,
                             preprocess=configurations if preprocess is None else preprocess)
    place_label_types(ds_dir, pf.parent)
    plans = read_json(pf)
    return {"plans": str(pf), "configurations": {
        c: {k: plans["configurations"][c][k] for k in ("spacing", "patch_size", "batch_size")}
        for c in configurations}}


def run(ctx: StageContext) -> dict:
    cfg = ctx.cfg
    src = data_sources(cfg, ctx.dir)
    if cfg.data.source == "phantoms":
        ctx.step("phantoms", to_dict(cfg.data.phantoms), lambda: write_phantom_data(cfg, ctx.dir),
                 outputs=[ctx.dir / "phantoms" / "manifest.csv"])

    paths = nnunet_paths(ctx.dir)
    paths.export()
    ds_dir = raw_dataset(paths.raw, dataset_folder_name(cfg.data.dataset_id, cfg.data.dataset_name))
    imported = ctx.step("import", {"data": to_dict(cfg.data), "src": {k: str(v) for k, v in src.items()}},
                        lambda: import_data(cfg, src, ds_dir), outputs=[ds_dir / "label_types.json"])

    pre_dir = preprocessed_dataset(paths.preprocessed, ds_dir.name)
    planned = ctx.step("plan_preprocess",
                       {"fine": to_dict(cfg.fine), "coarse": to_dict(cfg.coarse), "import": imported,
                        "types": read_json(ds_dir / "label_types.json")},
                       # coarse is planned here (stage-3 reads its spacing and normalisation) but
                       # preprocessed by stage-5 on its own training set: nothing reads it here
                       lambda: plan_data(cfg, ds_dir, preprocess=("fine",)),
                       outputs=[plans_file(pre_dir)])

    def do_train() -> dict:
        from flareseg.nnunet.training import train
        return train(ds_dir.name, "fine", cfg.train_fine, paths.preprocessed, paths.results,
                     log_dir=ctx.dir / "logs")

    from flareseg.nnunet.training import train_key
    model_dir = model_folder(paths.results, ds_dir.name, "fine")
    trained = ctx.step("train", {"train": train_key(cfg.train_fine), "plans": planned},
                       do_train, outputs=[model_dir / f"fold_{cfg.train_fine.fold}" / "checkpoint_final.pth"],
                       collective=True)

    outputs = [ds_dir / "dataset.json", ds_dir / "label_types.json", ds_dir / "cases.json",
               ds_dir / "import_report.json", plans_file(pre_dir)]
    return {"dataset": str(ds_dir), "preprocessed": str(pre_dir), "import": imported,
            **{k: str(src[k]) if src[k] else None
               for k in ("hidden_gt", "validation_images", "validation_labels")},
            "plans": planned, "model_dir": str(model_dir), "training": trained,
            "outputs": outputs + [model_dir / f"fold_{cfg.train_fine.fold}" / "checkpoint_final.pth"]}
