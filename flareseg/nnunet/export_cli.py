"""`flareseg export-model`: a model folder stock nnU-Net v2 loads without ``nnUNet_extTrainer``."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

HELP = """\
Write a copy of a model folder that stock nnU-Net v2 (nnUNetv2_predict_from_modelfolder,
nnUNetPredictor.initialize_from_trained_model_folder) loads as it is, with no nnUNet_extTrainer:
the checkpoints name nnUNetTrainer (the network comes from the plans, as FlareSegTrainer builds
it), keep the weights, configuration and allowed mirroring axes, and drop the optimizer state.

inputs : -m MODEL, an nnU-Net model folder (dataset.json, plans.json, fold_X/checkpoint_*.pth)
outputs: -o OUT with dataset.json, plans.json, fold_X/checkpoint_*.pth and flareseg_export.json
         (each file written atomically and verified; flareseg_export.json last, so a folder
         without it is unfinished; an earlier export there is replaced file by file: only files
         an export wrote, as OUT/.flareseg-written.jsonl records, are replaced or removed)
exit   : 0 written; 4 a write failed (disk full, read-only: one line naming the file, no
         half-written file); 2 bad model folder, damaged checkpoint, a trainer that builds its own network,
         -o equal to or inside -m, -o a file or a non-empty folder that is not an earlier export,
         an existing file of an output name that export did not write (unless --overwrite), an -o
         that cannot be created or written into

example:
  flareseg export-model -o models/coarse-stock \
      -m work/stage-5-coarse/nnUNet_results/Dataset824_FLARE23PartialCoarse/FlareSegTrainer__nnUNetPlans__coarse
  (stage-6 already writes this export to work/stage-6-ship/model)
  nnUNetv2_predict_from_modelfolder -i imgs -o out -m models/coarse-stock -f 0
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("export-model", help="write a model folder stock nnU-Net loads without env vars",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "-i", "--model", required=True, help="model folder to export (read only)")
    p.add_argument("-o", "--output", required=True, help="folder to write (not inside -m)")
    p.add_argument("--fold", default=None, help="fold(s) to export, e.g. 0 or 0,1 (default: every fold found)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in -o of the names export writes that an export did not write")
    p.add_argument("--trust-model", action="store_true",
                   help="load checkpoints that need more than tensors and numpy numbers (plain unpickling)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flareseg.io import InputError
    from flareseg.nnunet.export import export_model
    from flareseg.nnunet.model import ModelFolderError
    from flareseg.write_guard import UnsafeOutput

    folds = [f.strip() for f in args.fold.split(",")] if args.fold else None
    try:
        dest = export_model(args.model, args.output, folds, trust_model=args.trust_model,
                            overwrite=args.overwrite)
    except (InputError, ModelFolderError, UnsafeOutput) as e:
        log.error("%s", e)
        return 2

    print(f"stock-loadable model folder written to {dest}")
    return 0
