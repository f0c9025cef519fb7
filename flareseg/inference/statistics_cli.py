"""``flareseg statistics -i CT -s SEG [-o stats.json]``: volumes and HU statistics of an existing
segmentation (per class and per tumor component), the numbers ``predict --statistics`` writes."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

EPILOG = """\
inputs:  -i a CT (HU; .nii.gz/.nii/.mha/.nrrd or a DICOM series folder), -s its label map (FLARE23
         indices 0-14) on the same grid (size, spacing, origin, direction; a difference exits 2).
outputs: the statistics as JSON: per class voxels, volume (mL) and HU (mean, std, min, max, p5,
         p50, p95); the tumor's volume, component count and one entry per 26-connected
         component (voxels, mL, centroid (z, y, x) in voxels, HU), largest first. Written
         atomically to -o (never onto an input: exit 2), else printed on stdout.

example:
  flareseg statistics -i scan.nii.gz -s work/stage-6-ship/predictions/scan.nii.gz -o scan_stats.json
"""


def output_problem(out: Path, inputs: list[Path]) -> str | None:
    """Why ``out`` may not be written (it is an input, or inside an input folder), or None."""
    o = out.resolve()
    for p in inputs:
        r = p.resolve()
        if o == r or (out.exists() and p.exists() and out.samefile(p)):
            return f"{out}: is an input ({p}); choose another -o"
        if r.is_dir() and o.is_relative_to(r):
            return f"{out}: inside the input folder {p}; choose another -o"
    return None


def run_statistics(args: argparse.Namespace) -> int:
    from flareseg.inference.statistics import segmentation_statistics
    from flareseg.io import InputError, write_json
    if args.out is not None:
        bad = output_problem(Path(args.out), [Path(args.image), Path(args.seg)])
        if bad:
            print(f"flareseg statistics: {bad}", file=sys.stderr)
            return 2
    try:
        stats = segmentation_statistics(args.image, args.seg)
    except (InputError, ValueError) as e:
        print(f"flareseg statistics: {e}", file=sys.stderr)
        return 2
    if args.out is None:
        print(json.dumps(stats, indent=2))
    else:
        write_json(stats, args.out)
        log.info("statistics of %d classes and %d tumor components written to %s",
                 sum(1 for v in stats["voxels"].values() if v), stats["tumor"]["components"], args.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("statistics", help="volumes (mL) and HU per class and tumor component of a segmentation",
                       description="Statistics of an existing segmentation of a CT.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--image", required=True, type=Path, help="input CT file or DICOM series folder (HU)")
    p.add_argument("-s", "--seg", required=True, type=Path, help="label map of the CT (same grid)")
    p.add_argument("-o", "--out", type=Path, default=None, help="output JSON file (default: print on stdout)")
    p.set_defaults(func=run_statistics)
