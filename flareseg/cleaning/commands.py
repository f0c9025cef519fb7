"""`flareseg clean`: clean a folder of label maps (stage 4)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flareseg.regular_file import describe_kind, missing_reason
from flareseg.config import ConfigError, load_config
from flareseg.io import InputError, remove_stale_temps
from flareseg.write_guard import check_plan

HELP = """\
Remove label noise before coarse training, without touching the inputs:
  1. connected components smaller than cleaning.min_voxels (any class) -> background;
  2. tumor components outside the abdominal region (organ bounding box grown by
     cleaning.abdomen_margin_mm, or the body mask of the CT when a case has no organs);
  3. tumor components farther than cleaning.max_organ_distance_mm mm from every organ.

Inputs:  --labels DIR with FLARE23 label maps (.nii.gz/.nii/.mha/.nrrd), optional --images DIR
         with the CTs (<case>_0000.nii.gz or <case>.nii.gz).
Outputs: OUT/labels/ cleaned copies (same geometry), OUT/cases/<case>.json sidecars,
         OUT/cleaning_report.csv (every removal), OUT/cleaning_summary.csv (per case).
Reruns skip cases whose inputs and config are unchanged.
Exit: 0 done; 1 some case failed (each reported, the others cleaned); 2 usage/config error
before any work: missing or empty --labels folder, missing --images folder, --out a file, an input folder or
inside one, an output file that is an input file (e.g. --images OUT/labels), an existing output file clean did
not write (unless --overwrite), an --out that cannot be created or written into, a bad or out-of-range key
(cleaning.min_voxels >= 0, cleaning.*_mm >= 0); 4 when writing the reports fails (disk full: one line
naming the file, no partial file under a real name; a cleaned label that cannot be written fails its case).

examples:
  flareseg clean -i data/labelsTr -o data/labelsTr-clean --images data/imagesTr
  flareseg clean --labels L --out O --images I --config configs/default.yaml \\
      --set cleaning.min_voxels=50 --set cleaning.max_organ_distance_mm=30
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("clean", help="clean label maps (small components, stray tumors)",
                              description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--labels", required=True, help="folder of input label maps (read only)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--images", help="folder of CTs (HU), for cases without organ labels")
    p.add_argument("--config", help="YAML config (default: built-in paper settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. cleaning.min_voxels=50 (repeatable)")
    p.add_argument("--force", action="store_true", help="recompute cases that are up to date")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing files of the output names that clean did not write (refused by default)")
    p.set_defaults(func=run)


def check_paths(args: argparse.Namespace) -> None:
    """Usage errors before any work: missing or empty --labels folder, missing --images folder, --out that is a file or
    the --labels / --images folder itself (InputError naming the option and the path)."""
    labels, out = Path(args.labels), Path(args.out)
    for opt, p in (("--labels", labels), ("--images", args.images and Path(args.images))):
        if p is None:
            continue
        if not p.exists():
            why = missing_reason(p)
            raise InputError(p, f"{opt} folder does not exist" if why == "does not exist" else f"{opt}: {why}")
        if not p.is_dir():
            raise InputError(p, f"{opt} is not a folder: it is {describe_kind(p)}")
    from flareseg.cleaning.folder import adopt_earlier_clean, clean_plan, list_labels
    files = list_labels(labels)
    if not files:
        raise InputError(labels, "--labels holds no label files (.nii.gz/.nii/.mha/.nrrd): "
                                 "nothing to clean")
    images = Path(args.images) if args.images else None
    # the write guard: every output file against every input file (clean_folder checks again);
    # UnsafeOutput is a ValueError, exit 2 like the InputErrors above
    if out.is_dir():
        adopt_earlier_clean(out)
    check_plan(clean_plan(labels, out, images, files, getattr(args, "overwrite", False)))


def run(args: argparse.Namespace) -> int:
    from flareseg.cleaning.folder import clean_folder
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        check_paths(args)
        if Path(args.out).is_dir():   # what a killed earlier run left half-written
            remove_stale_temps(args.out, recursive=True)
        report = clean_folder(args.labels, args.out, cfg.cleaning, args.images, force=args.force,
                              overwrite=args.overwrite)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    by_reason: dict[str, int] = {}
    for r in report.records:
        by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
    print(f"{len(report.cases)} cases ({report.reused} up to date), "
          f"{len(report.records)} components removed "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(by_reason.items())) or 'none'})")
    print(f"report:  {report.report_csv}\nsummary: {report.summary_csv}")
    for c in report.errors:
        print(f"error: {c.error}", file=sys.stderr)
    return 1 if report.errors else 0
