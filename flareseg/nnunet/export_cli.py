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
settings: the inference settings travel with the model (flareseg_inference.json, which flareseg
         predict, the API and the Docker entry point start from): MODEL's own, changed by
         --config FILE's inference section and --set inference.KEY=VALUE when given; a MODEL
         without settings and no --config/--set gives an export without them (the defaults)
outputs: -o OUT with dataset.json, plans.json, fold_X/checkpoint_*.pth, flareseg_inference.json
         (when there are settings) and flareseg_export.json
         (each file written atomically and verified; flareseg_export.json last, so a folder
         without it is unfinished; an earlier export there is replaced file by file: only files
         an export wrote, as OUT/.flareseg-written.jsonl records, are replaced or removed)
exit   : 0 written; 4 a write failed (disk full, read-only: one line naming the file, no
         half-written file); 2 bad model folder, damaged checkpoint, a trainer that builds its own network,
         -o equal to or inside -m, -o a file or a non-empty folder that is not an earlier export,
         an existing file of an output name that export did not write (unless --overwrite), an -o
         that cannot be created or written into, a bad --config/--set key or value or a damaged
         MODEL/flareseg_inference.json

example:
  flareseg export-model -o models/coarse-stock \
      -m work/stage-5-coarse/nnUNet_results/Dataset824_FLARE23PartialCoarse/FlareSegTrainer__nnUNetPlans__coarse
  (stage-6 already writes this export to work/stage-6-ship/model, with the settings it measured)
  flareseg export-model -m work/stage-6-ship/model -o models/fp32 --set inference.dtype=float32
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
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML config whose inference section changes the model's inference settings")
    p.add_argument("--set", action="append", default=[], metavar="inference.KEY=VALUE",
                   help="change one inference setting (repeatable; wins over --config)")
    p.add_argument("--trust-model", action="store_true",
                   help="load checkpoints that need more than tensors and numpy numbers (plain unpickling)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flareseg.config import ConfigError, to_dict
    from flareseg.inference.model_settings import resolve_inference
    from flareseg.io import InputError
    from flareseg.nnunet.export import export_model
    from flareseg.nnunet.model import ModelFolderError
    from flareseg.write_guard import UnsafeOutput

    folds = [f.strip() for f in args.fold.split(",")] if args.fold else None
    try:
        bad = [s for s in args.set if not s.strip().startswith("inference.")]
        if bad:
            raise ConfigError(f"--set {bad[0]}: export-model takes only inference.KEY=VALUE")
        inference, source = None, None
        if args.config is not None or args.set:
            inference = to_dict(resolve_inference(args.model, args.config, args.set))
            source = " ".join([f"export-model of {args.model}", *([f"--config {args.config}"] if args.config else []),
                               *(f"--set {s}" for s in args.set)])
        dest = export_model(args.model, args.output, folds, trust_model=args.trust_model,
                            overwrite=args.overwrite, inference=inference, settings_source=source)
    except (InputError, ModelFolderError, UnsafeOutput, ConfigError) as e:
        log.error("%s", e)
        return 2

    print(f"stock-loadable model folder written to {dest}")
    return 0
