"""`flareseg phantoms`: write the synthetic partially labeled phantom data set."""
from __future__ import annotations

import argparse
import dataclasses
import logging
from collections import Counter
from pathlib import Path

from flareseg.config import ConfigError, PhantomConfig, load_config

log = logging.getLogger(__name__)

EPILOG = """\
outputs (under --out):
  imagesTr/<case>_0000.nii.gz     labeled + tumor-only images (int16 HU)
  labelsTr/<case>.nii.gz          partial labels (unannotated classes set to 0)
  unlabeledTr/<case>_0000.nii.gz  unlabeled images
  imagesVal/, labelsVal/          held-out validation images and their full labels
  hidden_gt/<case>.nii.gz         full ground truth of every training case
  manifest.csv                    case_id,annotated (e.g. "PH_0003,1 14")
  phantoms.json                   config, seed and per-case pool/group/geometry/tumors

Labeled cases mimic the FLARE23 groups: all organs + tumor, all organs, liver + tumor,
kidneys + tumor, pancreas + tumor. Geometry varies per case (in-plane/slice spacing, size,
extent, direction identity / diag(-1,-1,1) / flipped z) with anatomy consistent in physical
space. Same seed -> identical arrays; existing cases of the same config are skipped unless
--overwrite.

examples:
  flareseg phantoms --out data/phantoms
  flareseg phantoms --out /tmp/ph --labeled 10 --tumor-only 2 --unlabeled 10 --validation 3 --seed 7
  flareseg phantoms --out /tmp/ph --config configs/demo.yaml --size-xy 96 128 --slice-spacing 2.5 5
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "phantoms", help="write synthetic partially labeled abdominal CT phantoms",
        description="Write CT-like abdominal phantoms (HU, 13 FLARE organs + tumors) with "
                    "FLARE23-style partial labels, hidden full ground truth and a manifest.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder (created if needed)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config; its data.phantoms section gives the defaults below")
    p.add_argument("--labeled", type=int, help="cases with partial organ (+/- tumor) labels")
    p.add_argument("--tumor-only", type=int, help="cases with only the tumor annotated")
    p.add_argument("--unlabeled", type=int, help="cases without labels")
    p.add_argument("--validation", type=int, help="held-out cases with full labels")
    p.add_argument("--seed", type=int, help="random seed (same seed -> same data)")
    p.add_argument("--size-xy", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="in-plane array size range (voxels)")
    p.add_argument("--inplane-spacing", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="in-plane spacing range (mm)")
    p.add_argument("--slice-spacing", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="slice spacing range (mm)")
    p.add_argument("--extent-z", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="scanned length along z (mm)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="regenerate cases that already exist")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> PhantomConfig:
    """PhantomConfig from ``--config`` (or the defaults) with the command-line values on top."""
    cfg = load_config(args.config).data.phantoms if args.config else PhantomConfig()
    over = {"labeled": args.labeled, "tumor_only": args.tumor_only, "unlabeled": args.unlabeled,
            "validation": args.validation, "seed": args.seed,
            "size_xy": tuple(args.size_xy) if args.size_xy else None,
            "inplane_spacing": tuple(args.inplane_spacing) if args.inplane_spacing else None,
            "slice_spacing": tuple(args.slice_spacing) if args.slice_spacing else None,
            "extent_z_mm": tuple(args.extent_z) if args.extent_z else None}
    return dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from flareseg.data.phantoms import write_phantoms
    try:
        cfg = config_from_args(args)
        meta = write_phantoms(args.out, cfg, overwrite=args.overwrite, workers=args.workers)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}")
        return 2
    groups = Counter(c["group"] for c in meta["cases"].values())
    print(f"wrote {len(meta['cases'])} phantoms to {args.out} (seed {cfg.seed}): "
          + ", ".join(f"{g} {n}" for g, n in sorted(groups.items())))
    return 0
