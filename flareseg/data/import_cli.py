"""`flareseg import` subcommand."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from flareseg.data.intake import ImportConfigError, ImportFailed, import_dataset
from flareseg.io import InputError
from flareseg.write_guard import UnsafeOutput

log = logging.getLogger(__name__)

HELP = """\
Validate FLARE23-style folders and write an nnU-Net v2 raw dataset.

Inputs: --images (labeled images, <case>_0000.nii.gz / .nii / .mha / .nrrd or one DICOM folder
per case), --labels (<case>.nii.gz), --unlabeled (images without labels), optional --manifest
CSV `case_id,annotated` (e.g. `FLARE23_0001,1 2 3 4 13 14`) naming the annotated classes of each
labeled case, or the FLARE23 authors' JSON type file (case_to_partial_type.json:
{"FLARE23_0001": "1_2_3_4_5_6_7_8_9_10_11_12_13_14", ...}; entries for cases not imported are
skipped). With a manifest every labeled case needs an entry. Without one the label type of a case
is the set of classes present in its label, and the report says so: an absent organ (e.g. a
nephrectomy) then reads as unannotated. --types FILE (CSV or JSON as above) overrides the types of
the cases it lists, and only those: the others keep their manifest entry or their labels' classes.
After the import, the types are printed: cases per type, most frequent first, in words ("all
organs but right_kidney + tumor"), rare types (at most 2 cases, or 1 %) with their case ids.

Outputs in --out (a DatasetNNN_Name folder): imagesTr/, labelsTr/, imagesUnlabeled/,
dataset.json, label_types.json (case -> annotated classes), cases.json (labeled / tumor_only /
unlabeled pools), import_report.json (every case; bad ones with file and reason).

Every case is checked: readable, 3-D scalar, finite, sane spacing, label on the image grid
(labels stored with a flipped/permuted axis are re-gridded by physical coordinates), label values
integral in 0..14, label not empty when classes are claimed. Entries that cannot be a case are bad
cases too: a broken symlink, an empty or non-DICOM subfolder, two files with one case id
(X_0000.nii.gz and X_0000.nrrd). A bad case is reported (one line: file and reason) and skipped,
the rest is imported. --strict checks every case first and imports nothing if any is bad.
Reruns skip cases already imported from the same files. The output folder always holds exactly the
good cases of the run: dataset.json, label_types.json and cases.json list what is on disk.

Refused before anything is written (exit 2): a missing input folder or manifest, input folders
that hold nothing to import (one empty folder among others is only a warning), a case id that
is both labeled (--images/--labels) and unlabeled (--unlabeled): remove one of the two files; a
bad manifest row, reported as manifest.csv:LINE (missing or extra column, non-integer or unknown
class, repeated or unknown case id); an --out that is a file, lies under a file, overlaps an
input folder, cannot be written into, or is a non-empty folder that is not an earlier import
(an existing nnU-Net dataset of yours is refused, never cleaned up: import replaces or removes
only files an earlier import wrote, as recorded in --out/.flareseg-written.jsonl).

Exit codes: 0 every case imported; 1 some cases bad (each reported, the rest imported; --strict:
nothing imported); 2 bad arguments or inputs as above; 4 a write failed mid-run (disk full,
read-only: one line naming the file, no half-written file under a real name).

Example:
  flareseg import --images raw/imagesTr --labels raw/labelsTr --unlabeled raw/unlabeled \\
      --manifest raw/annotated.csv --out nnUNet_raw/Dataset823_FLARE23Partial
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="validate FLARE folders and write an nnU-Net raw dataset",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--images", type=Path, help="folder of labeled images")
    p.add_argument("--labels", type=Path, help="folder of label maps (<case>.nii.gz)")
    p.add_argument("--unlabeled", type=Path, help="folder of unlabeled images")
    p.add_argument("--manifest", type=Path,
                   help="label types of every labeled case: CSV case_id,annotated (space-separated class "
                        "indices) or the FLARE23 authors' case_to_partial_type.json")
    p.add_argument("--types", type=Path, default=None,
                   help="per-case label type overrides (CSV or JSON as --manifest), only the cases listed; "
                        "the others keep their --manifest entry or the classes present in their label")
    p.add_argument("-o", "--out", type=Path, required=True, help="output dataset folder (DatasetNNN_Name)")
    p.add_argument("--strict", action="store_true", help="check every case first; import nothing (exit 1) if any is bad")
    p.add_argument("-j", "--num-processes", type=int, default=1, help="parallel workers")
    p.add_argument("--keep-orientation", action="store_true",
                   help="write each case in its stored orientation; by default a case whose direction is not the "
                        "identity is written permuted and flipped to it (LPS ascending, nothing resampled), so "
                        "left and right are the same array side in every case (data.reorient)")
    p.set_defaults(func=run)
    from flareseg.dicom import add_series_option
    add_series_option(p)
    from flareseg.data.validate import add_copy_geometry_option
    add_copy_geometry_option(p)


def run(args: argparse.Namespace) -> int:
    if args.images is None and args.unlabeled is None:
        log.error("flareseg import: give --images with --labels, and/or --unlabeled")
        return 2
    if (args.images is None) != (args.labels is None):
        log.error("flareseg import: --images and --labels go together (labeled images and their labels)")
        return 2
    if args.num_processes < 1:
        log.error("flareseg import: --num-processes must be at least 1, got %d", args.num_processes)
        return 2
    try:
        rep = import_dataset(args.out, args.images, args.labels, args.unlabeled, args.manifest,
                             strict=args.strict, num_processes=args.num_processes, types_override=args.types,
                             reorient=not args.keep_orientation)
    except ImportConfigError as e:
        for msg in e.problems:
            log.error("%s", msg)
        log.error("nothing imported: fix the input(s) above")
        return 2
    except (InputError, UnsafeOutput) as e:
        log.error("%s", e)
        return 2
    except ImportFailed as e:   # each bad case is already logged
        log.error("import failed (--strict): %s -> %s left as it was", e, args.out)
        return 1
    if rep.label_types():
        print("\n".join(rep.type_lines()))
    print(f"imported {len(rep.good)} case(s), {len(rep.bad)} bad -> {args.out} "
          f"(label types from {rep.label_type_source}; see import_report.json)")
    return 1 if rep.bad else 0
