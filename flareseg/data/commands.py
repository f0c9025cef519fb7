"""`flareseg phantoms`: write the synthetic partially labeled phantom data set."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections import Counter
from pathlib import Path

from flareseg.config import MAX_PHANTOMS, ConfigError, PhantomConfig, check_value, load_config

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
--overwrite.  Each case is written as soon as it is generated.

limits: at most {MAX_PHANTOMS} cases per kind (--labeled, --tumor-only, --unlabeled, --validation),
--seed 0..2**32-1, --size-xy 16..2048 voxels, spacings and --extent-z > 0 with MIN <= MAX,
--workers 1..{MAX_WORKERS}.  exit: 0 written; 2 a bad option or config value (one line naming it).

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
        epilog=EPILOG.format(MAX_PHANTOMS=MAX_PHANTOMS, MAX_WORKERS=MAX_WORKERS), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder (created if needed)")
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


#: command-line option -> PhantomConfig field it sets
OPTIONS = {"--labeled": "labeled", "--tumor-only": "tumor_only", "--unlabeled": "unlabeled",
           "--validation": "validation", "--seed": "seed", "--size-xy": "size_xy",
           "--inplane-spacing": "inplane_spacing", "--slice-spacing": "slice_spacing",
           "--extent-z": "extent_z_mm"}
MAX_WORKERS = 256


def config_from_args(args: argparse.Namespace) -> PhantomConfig:
    """PhantomConfig from ``--config`` (or the defaults) with the command-line values on top.

    Each option is range-checked like its config key (``flareseg.config.RANGES``: at most
    ``MAX_PHANTOMS`` cases per kind, seed 0..2**32-1, ranges lo <= hi); ConfigError names it."""
    cfg = load_config(args.config).data.phantoms if args.config else PhantomConfig()
    over = {}
    for opt, name in OPTIONS.items():
        value = getattr(args, opt[2:].replace("-", "_"))
        if value is None:
            continue
        value = tuple(value) if isinstance(value, list) else value
        check_value(PhantomConfig, name, value, f"data.phantoms.{name}", opt)
        over[name] = value
    return dataclasses.replace(cfg, **over)


def run(args: argparse.Namespace) -> int:
    from flareseg.data.phantoms import write_phantoms
    try:
        if not 1 <= args.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers: {args.workers} is out of range (expected 1..{MAX_WORKERS})")
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError(f"{args.out}: --out exists and is not a folder")
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        meta = write_phantoms(args.out, cfg, overwrite=args.overwrite, workers=args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    groups = Counter(c["group"] for c in meta["cases"].values())
    print(f"wrote {len(meta['cases'])} phantoms to {args.out} (seed {cfg.seed}): "
          + ", ".join(f"{g} {n}" for g, n in sorted(groups.items())))
    return 0
