"""stage-3: the context-aware tumor-object (CTO) pool at coarse spacing, plus a QC gallery.

Sources: every imported training case whose label type includes tumor; tumor-only cases use the
labels with organs filled in by stage-2 (so each object keeps its organ context).  These are the
labels stage-4 cleans, and stage-3 cleans each one with the same rules and keys (``cleaning.*``)
before cutting objects, so no pooled tumor is one that cleaning deletes from the training labels
(stage-3 therefore depends on the ``cleaning`` section, not on stage-4's outputs).  Context margins
(``cto.margin_z``/``cto.margin_xy``) are voxels at the coarse spacing.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from flareseg.config import to_dict
from flareseg.io import InputError, read_array, read_json
from flareseg.labels import TUMOR
from flareseg.nnunet.env import plans_file
from flareseg.pipeline.stage import StageContext

log = logging.getLogger(__name__)


def tumor_cases(dataset_dir: Path, filled_dir: Path | None) -> list[tuple[str, Path, Path]]:
    """(case, image, label) of training cases with annotated tumor; filled labels preferred."""
    types = read_json(dataset_dir / "label_types.json")
    out = []
    for cid, t in sorted(types.items()):
        if TUMOR not in t:
            continue
        lab = dataset_dir / "labelsTr" / f"{cid}.nii.gz"
        if filled_dir is not None and (filled_dir / f"{cid}.nii.gz").exists():
            lab = filled_dir / f"{cid}.nii.gz"
        out.append((cid, dataset_dir / "imagesTr" / f"{cid}_0000.nii.gz", lab))
    return out


def _read_cases(cases: list[tuple[str, Path, Path]]) -> Iterator[tuple]:
    for cid, img_p, lab_p in cases:
        try:
            img, geo = read_array(img_p)
            lab, _ = read_array(lab_p)
        except InputError as e:
            log.error("CTO pool: case %s skipped: %s", cid, e)
            continue
        yield cid, img, lab, geo.spacing_zyx


def run(ctx: StageContext) -> dict:
    from flareseg.cto.gallery import cto_gallery
    from flareseg.cto.pool import build_pool, load_pool
    from flareseg.nnunet.plans import normalizer

    cfg = ctx.cfg
    s1 = ctx.upstream(1)["result"]
    s2 = ctx.upstream(2)["result"]
    ds = Path(s1["dataset"])
    filled = Path(s2["filled_dir"]) if s2.get("filled_dir") else None
    cases = tumor_cases(ds, filled)
    pool_dir = ctx.dir / "pool"
    plans = read_json(plans_file(s1["preprocessed"]))
    coarse = plans["configurations"]["coarse"]

    def build() -> dict:
        idx = build_pool(_read_cases(cases), pool_dir, cfg.cto, coarse["spacing"],
                         normalizer(plans, "coarse"), patch_size=coarse["patch_size"],
                         abdomen_margin_mm=cfg.cto.abdomen_margin_mm, cleaning=cfg.cleaning)
        return {"objects": len(idx["objects"]), "rejected": len(idx.get("rejected", [])),
                "errors": len(idx.get("errors", []))}

    res = ctx.step("pool", {"cto": to_dict(cfg.cto), "cleaning": to_dict(cfg.cleaning),
                            "cases": [[c, str(i), str(lab)] for c, i, lab in cases],
                            "spacing": coarse["spacing"], "patch": coarse["patch_size"]},
                   build, outputs=[pool_dir / "index.json"])
    gallery = ctx.dir / "qc" / "cto_gallery.png"
    pool = load_pool(pool_dir)
    if len(pool.ids):
        cto_gallery(pool, gallery)
    return {"pool_dir": str(pool_dir), "source_cases": len(cases), **res,
            "gallery": str(gallery) if gallery.exists() else None,
            "outputs": [pool_dir] + ([gallery] if gallery.exists() else [])}
