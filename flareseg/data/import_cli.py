"""`flareseg import` subcommand."""
from __future__ import annotations

import argparse
from pathlib import Path

from flareseg.data.intake import ImportFailed, import_dataset

HELP = """\
Validate FLARE23-style folders and write an nnU-Net v2 raw dataset.

Inputs: --images (labeled images, <case>_0000.nii.gz / .nii / .mha / .nrrd or one DICOM folder
per case), --labels (<case>.nii.gz), --unlabeled (images without labels), optional --manifest
CSV `case_id,annotated` (e.g. `FLARE23_0001,1 2 3 4 13 14`) naming the annotated classes of each
labeled case. Without a manifest the label type of a case is the set of classes present in its
label, and the report says so.

Outputs in --out (a DatasetNNN_Name folder): imagesTr/, labelsTr/, imagesUnlabeled/,
dataset.json, label_types.json (case -> annotated classes), cases.json (labeled / tumor_only /
unlabeled pools), import_report.json (every case; bad ones with file and reason).

Every case is checked: readable, 3-D scalar, finite, sane spacing, label on the image grid
(labels stored with a flipped/permuted axis are re-gridded by physical coordinates), label values
integral in 0..14, label not empty when classes are claimed. A bad case is reported and skipped
(--strict: exit 1 instead). Reruns skip cases already imported from the same files.

Example:
  flareseg import --images raw/imagesTr --labels raw/labelsTr --unlabeled raw/unlabeled \\
      --manifest raw/annotated.csv --out nnUNet_raw/Dataset823_FLARE23Partial
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="validate FLARE folders and write an nnU-Net raw dataset",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="folder of labeled images")
    p.add_argument("--labels", type=Path, help="folder of label maps (<case>.nii.gz)")
    p.add_argument("--unlabeled", type=Path, help="folder of unlabeled images")
    p.add_argument("--manifest", type=Path, help="CSV case_id,annotated (space-separated class indices)")
    p.add_argument("--out", type=Path, required=True, help="output dataset folder (DatasetNNN_Name)")
    p.add_argument("--strict", action="store_true", help="fail (exit 1) if any case is bad")
    p.add_argument("-j", "--num-processes", type=int, default=1, help="parallel workers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.images is None and args.unlabeled is None:
        print("flareseg import: give --images/--labels and/or --unlabeled")
        return 2
    if args.images is not None and args.labels is None:
        print("flareseg import: --images needs --labels")
        return 2
    try:
        rep = import_dataset(args.out, args.images, args.labels, args.unlabeled, args.manifest,
                             strict=args.strict, num_processes=args.num_processes)
    except ImportFailed as e:
        print(f"import failed (--strict): {e}")
        return 1
    for cid, r in sorted(rep.bad.items()):
        print(f"ERROR {cid}: {r['reason']}")
    print(f"imported {len(rep.good)} case(s), {len(rep.bad)} bad -> {args.out} "
          f"(label types from {rep.label_type_source}; see import_report.json)")
    return 0
