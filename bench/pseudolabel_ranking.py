"""Does stage-2's uncertainty ranking pick the better pseudo labels?  Measured on fresh phantoms.

    python -m bench.pseudolabel_ranking --model WORK/stage-1-fine/nnUNet_results/<Dataset>/FlareSegTrainer__nnUNetPlans__fine
                                        [--config configs/demo.yaml] [--cases 48] [--seed 1000] [--tta]
                                        [--external MODEL_FOLDER ...] [--external-groups organ|organ+tumor]
                                        [--tumor-score entropy] [--out docs/benchmarks/pseudolabel_ranking.md]

Generates ``--cases`` unlabeled-style phantoms (the config's phantom settings, a seed stream that
never overlaps the pipeline's own cases) with their full hidden ground truth, scores each one
exactly like stage-2 does (``FastPredictor(model, cfg.inference)`` + stage-2's ``make_scorer``; ``--tta``
adds the left-right mirrored prediction as a second member (``pseudolabel.member_tta``), so the
disagreement / inconsistency / overlap scores exist too), and
selects with ``select`` under the config's ``pseudolabel`` settings.  Reports, per score: Spearman
rank correlation between organ uncertainty and the pseudo label's true mean organ Dice (organs
present in the truth), and mean Dice of the selected vs the rejected cases; also the same for the
tumor group (cases with a tumor in the truth).  ``overlap`` is a confidence (higher = more
certain), so a good ranking shows a *positive* correlation for it and a negative one for the others.

``--external FOLDER`` (repeatable) stands in for the paper's external algorithms: that model's
label map of each phantom, its tumor voxels given the nearest organ's label (an organ-only
algorithm's view), is written to a label folder and joins as a ``member_label_dirs`` member,
counting for ``--external-groups`` (default ``organ``, stage-2's default; ``organ+tumor`` is how
every label folder counted before issue 16).  ``--tumor-score`` ranks tumors by another score
than the organ one (``pseudolabel.tumor_score``; with organ-only externals and no ``--tta`` the
fine model is the only tumor member, so only ``entropy`` ranks tumors).  The tumor columns count
the selected cases with a tumor in the truth; "not scored" = of those, how many got no tumor
score (ranked last, never kept).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench._common import add_overwrite_arg, machine_line, refuse_input_outputs, run_bench, write_report
from flareseg.config import load_config
from flareseg.data.phantom_case import generate_case
from flareseg.evaluation.metrics import dice
from flareseg.io import read_array, write_array
from flareseg.inference.predictor import FastPredictor
from flareseg.labels import ORGANS, TUMOR
from flareseg.pseudolabel.selection import select
from flareseg.pseudolabel.members import make_scorer
from flareseg.pseudolabel.uncertainty import SCORES, score_key


def spearman(a, b) -> str:
    """Spearman's rho as ``+0.123``, or ``n/a`` when one side is constant."""
    from scipy.stats import spearmanr
    if len(set(a)) < 2 or len(set(b)) < 2:
        return "n/a"
    return f"{float(spearmanr(a, b).statistic):+.3f}"


def organ_only(lab: np.ndarray) -> np.ndarray:
    """``lab`` with every tumor voxel given the label of the nearest non-tumor foreground voxel
    (background where there is none): what an algorithm without a tumor class would output."""
    from scipy.ndimage import distance_transform_edt
    tumor = lab == TUMOR
    fg = (lab > 0) & ~tumor
    if not tumor.any() or not fg.any():
        return np.where(tumor, 0, lab).astype(np.uint8)
    idx = distance_transform_edt(~fg, return_distances=False, return_indices=True)
    return np.where(tumor, lab[tuple(idx)], lab).astype(np.uint8)


def score_cases(model: Path, cfg, n: int, seed: int, tta: bool, externals=(), external_groups="organ"):
    """Per case: stage-2 scores, true mean organ Dice, true tumor Dice (None without tumor)."""
    pred = FastPredictor(model, cfg.inference)
    ext_preds = [FastPredictor(m, cfg.inference) for m in externals]
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        ext_dirs = [Path(tmp) / f"external{k}" for k in range(len(externals))]
        pc = replace(cfg.pseudolabel, member_tta=tta, member_label_dirs=tuple(map(str, ext_dirs)),
                     member_label_groups=(external_groups,) * len(ext_dirs) if ext_dirs else ())
        scorer = make_scorer(pred, pc, cfg.inference, lambda cid: cases[cid][0], Path(tmp))
        rows = {}
        for i in range(n):
            cid = f"R{i:04d}"
            image, full, geo, _ = generate_case(np.random.default_rng([seed, i]), cfg.data.phantoms)
            cases[cid] = (geo.apply(sitk.GetImageFromArray(image)), full)
            for p, d in zip(ext_preds, ext_dirs):
                ext = sitk.GetArrayFromImage(p.predict(cases[cid][0])).astype(np.uint8)
                write_array(organ_only(ext), geo, d / f"{cid}.nii.gz")
            scores = scorer(cid)
            lab, _ = read_array(Path(tmp) / f"{cid}.nii.gz")
            organ = float(np.mean([dice(lab == c, full == c) for c in ORGANS if (full == c).any()]))
            tumor = dice(lab == TUMOR, full == TUMOR) if (full == TUMOR).any() else None
            rows[cid] = (scores, organ, tumor)
            del cases[cid]
    return rows


def summarise(rows, pc) -> list[str]:
    scores = {k: v[0] for k, v in rows.items()}
    lines = []
    first = next(iter(scores.values()))
    names = [n for n in SCORES if score_key("organ", n) in first]
    for name in names:
        tname = pc.tumor_score or name
        sel = {s.case_id: s for s in select(scores, replace(pc, score=name))}
        org = [(scores[c][score_key("organ", name)], rows[c][1], sel[c].selected) for c in rows]
        s_sel = [d for _, d, k in org if k]
        s_rej = [d for _, d, k in org if not k]
        true_tumor = [c for c in rows if rows[c][2] is not None and sel[c].selected]
        tum = [(sel[c].tumor_score, rows[c][2], sel[c].keep_tumor)
               for c in true_tumor if sel[c].tumor_score is not None]
        t_kept = [d for _, d, k in tum if k]
        t_drop = [d for _, d, k in tum if not k]
        kept_ids = sorted(c for c in rows if sel[c].keep_tumor)
        lines.append(
            f"| {name} | {tname} | {len(org)} | {spearman([u for u, _, _ in org], [d for _, d, _ in org])} | "
            f"{len(s_sel)} / {len(s_rej)} | **{np.mean(s_sel):.3f}** vs {np.mean(s_rej):.3f} | "
            f"{len(true_tumor) - len(tum)} of {len(true_tumor)} | "
            + (f"{spearman([u for u, _, _ in tum], [d for _, d, _ in tum])} ({len(tum)}) | " if len(tum) > 2 else "- | ")
            + (f"{np.mean(t_kept):.3f} vs {np.mean(t_drop):.3f} |" if t_kept and t_drop else "- |")
            + f" {len(kept_ids)}: {', '.join(kept_ids[:4])}{' ...' if len(kept_ids) > 4 else ''} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="fine model folder (stage-1's)")
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"),
                    help="phantom, inference and pseudolabel settings (default configs/demo.yaml)")
    ap.add_argument("--cases", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1000, help="phantom seed stream (pipeline cases use data.phantoms.seed)")
    ap.add_argument("--tta", action="store_true", help="add the left-right mirrored member (disagreement/inconsistency/overlap scores)")
    ap.add_argument("--external", type=Path, action="append", default=[],
                    help="model folder standing in for an external algorithm: its labels, tumor given to "
                         "the nearest organ, join as a label-folder member (repeatable)")
    ap.add_argument("--external-groups", default="organ", choices=("organ", "organ+tumor"),
                    help="what the external label members count for (stage-2 default: organ)")
    ap.add_argument("--tumor-score", default=None, choices=("entropy", "disagreement", "inconsistency"),
                    help="rank tumors by this score (pseudolabel.tumor_score; default: each organ score)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--out", type=Path, default=None, help="write the table as markdown here")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    refuse_input_outputs({"--out": args.out}, [args.config], args.model, folders=args.external, overwrite=args.overwrite)
    logging.basicConfig(level=logging.WARNING)
    if not (args.model / "fold_0" / "checkpoint_final.pth").exists():
        ap.error(f"{args.model}: no fold_0/checkpoint_final.pth (pass stage-1's fine model folder)")
    cfg = load_config(args.config)
    for m in args.external:
        if not (m / "fold_0" / "checkpoint_final.pth").exists():
            ap.error(f"{m}: no fold_0/checkpoint_final.pth (--external needs a model folder)")
    cfg = replace(cfg, inference=replace(cfg.inference, device=args.device),
                  pseudolabel=replace(cfg.pseudolabel, tumor_score=args.tumor_score))
    t0 = time.perf_counter()
    rows = score_cases(args.model, cfg, args.cases, args.seed, args.tta, args.external, args.external_groups)
    secs = time.perf_counter() - t0
    pc = cfg.pseudolabel
    head = ["| organ score | tumor score | cases | Spearman(organ uncertainty, organ Dice) | selected / rejected | "
            "organ Dice selected vs rejected | true-tumor cases not scored | Spearman(tumor uncertainty, tumor Dice) | "
            "tumor Dice kept vs dropped | tumor kept in |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    table = "\n".join(head + summarise(rows, pc))
    mean_org = np.mean([r[1] for r in rows.values()])
    first = select({k: v[0] for k, v in rows.items()}, pc)
    notes = Counter(s.tumor_note for s in first if s.tumor_note)
    members = sorted({(v[0].get("organ_members"), v[0].get("tumor_members")) for v in rows.values()})
    tumor_cases = sum(r[2] is not None for r in rows.values())
    predicted = sum(v[0].get("tumor_voxels", 0) > 0 for v in rows.values())
    text = (f"Command: `python -m bench.pseudolabel_ranking {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
            f"{machine_line(cfg.inference.device).replace('machine: ', 'Machine: ', 1)}; {args.cases} phantoms scored in {secs:.0f} s; k_organ {pc.k_organ}, "
            f"k_tumor {pc.k_tumor}; mean true organ Dice of all pseudo labels {mean_org:.3f}; "
            f"(organ, tumor) members per case {members}; {tumor_cases} phantoms with a tumor in the truth, "
            f"{predicted} with a tumor predicted; no-tumor-score reasons ({pc.score} row, all cases): "
            f"{dict(notes) or 'none'}.\n\n{table}\n")
    write_report(text, args.out, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "pseudolabel_ranking"))
