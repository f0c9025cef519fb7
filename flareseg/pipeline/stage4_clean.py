"""stage-4: clean every label the coarse model will train on (ground truth, organ-filled
tumor-only cases and selected pseudo labels) and write the coarse training set.

Inputs are linked into ``inputs/`` (never edited); cleaned copies, ``cleaning_report.csv`` and the
per-case summary come from :func:`flareseg.cleaning.folder.clean_folder`; ``training_set.json``
maps each case to its image, cleaned label, label type and source for stage-5.
"""
from __future__ import annotations

from pathlib import Path

from flareseg.config import to_dict
from flareseg.io import link_or_copy, read_json, write_json
from flareseg.pipeline.stage import StageContext


def gather(s1: dict, s2: dict) -> dict[str, dict]:
    """case -> {image, label, label_type, source}: ground truth first, stage-2 entries override
    (filled tumor-only cases) or add (selected pseudo labels)."""
    ds = Path(s1["dataset"])
    out = {cid: {"image": str(ds / "imagesTr" / f"{cid}_0000.nii.gz"),
                 "label": str(ds / "labelsTr" / f"{cid}.nii.gz"), "label_type": t, "source": "gt"}
           for cid, t in read_json(ds / "label_types.json").items()}
    out.update(read_json(s2["training_additions"]))
    return out


def run(ctx: StageContext) -> dict:
    from flareseg.cleaning.folder import clean_folder

    s1, s2 = ctx.upstream(1)["result"], ctx.upstream(2)["result"]
    cases = gather(s1, s2)
    inp = ctx.dir / "inputs"
    for cid, rec in cases.items():
        for kind, name in (("label", f"{cid}.nii.gz"), ("image", f"{cid}_0000.nii.gz")):
            dest = inp / f"{kind}s" / name
            if not dest.exists():
                link_or_copy(rec[kind], dest)
    report = ctx.step("clean", {"cleaning": to_dict(ctx.cfg.cleaning), "cases": cases},
                      # the stage folder is the pipeline's (check_stage_folder): clean may replace
                      # what is there, also in a copied work folder whose ledger no longer matches
                      lambda: _summary(clean_folder(inp / "labels", ctx.dir, ctx.cfg.cleaning, inp / "images",
                                                    overwrite=True)),
                      outputs=[ctx.dir / "cleaning_report.csv"])
    bad = set(report.get("errors", []))
    training = {cid: {**rec, "label": str(ctx.dir / "labels" / f"{cid}.nii.gz")}
                for cid, rec in sorted(cases.items()) if cid not in bad}
    write_json(training, ctx.dir / "training_set.json")
    by_source: dict[str, int] = {}
    for rec in training.values():
        by_source[rec["source"]] = by_source.get(rec["source"], 0) + 1
    return {"training_set": str(ctx.dir / "training_set.json"), "cases": by_source, **report,
            "outputs": [ctx.dir / "training_set.json", ctx.dir / "cleaning_report.csv", ctx.dir / "labels"]}


def _summary(report) -> dict:
    removed: dict[str, int] = {}
    for r in report.records:
        removed[r.reason] = removed.get(r.reason, 0) + 1
    return {"removed_components": len(report.records), "removed_by_reason": removed,
            "errors": sorted(e.case for e in report.errors) if report.errors else []}
