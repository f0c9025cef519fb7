"""`flareseg predict`: the command line (flags, settings, exit codes) over the one batch runner
(:mod:`flareseg.inference.batch`) that :func:`flareseg.predict` runs too."""
from __future__ import annotations

import argparse
import logging
import typing
from dataclasses import fields
from pathlib import Path

from flareseg.config import IMAGE_RESAMPLING, ConfigError, InferenceConfig
from flareseg.io import InputError
from flareseg.inference.output_plan import collect_inputs
from flareseg.write_guard import UnsafeOutput

log = logging.getLogger(__name__)

# collect_inputs: the input listing stage-6 and the benches import from here
__all__ = ["register", "run_predict", "resolve_inference", "key_value", "collect_inputs", "FLAG_KEYS"]

EPILOG = """\
inputs:  a CT file (.nii.gz/.nii/.mha/.nrrd), a DICOM series folder, or a folder of either
         (nnU-Net channel files case_0000.nii.gz count as case; other channels are ignored).
outputs: OUT/<case>.nii.gz label maps on exactly the input grid (DICOM folder -> <folder>.nii.gz),
         OUT/predict_report.json (versions, device, seconds and skipped windows per case),
         with --statistics OUT/statistics.json (class volumes in mL, HU per class and per tumor
         component, tumor burden per case),
         with --save-probabilities OUT/<case>.npz (softmax, key "probabilities", (K, Z, Y, X)),
         with --preview OUT/<case>_preview.png (CT slices with the label overlay and legend),
         with --per-class / --roi-subset OUT/<case>/<class_name>.nii.gz (one 0/1 mask per class),
         with --output-format dicom-seg OUT/<case>.dcm per DICOM series input (a DICOM SEG
         referencing the series; needs pip install 'flareseg[dicom-seg]').
         A single input file with -o ending in .nii.gz writes exactly that file.
A case that fails is reported and skipped; the exit code is 1 if any case failed.

safety:  inputs are never written to. Before the model loads, predict refuses (exit 2) an -o equal
         to the input folder, and any output (label map, .npz, statistics.json, the report) whose
         path is an input file, the model's files, or the same file through a symlink or hard
         link; -o may be a subfolder of the input folder. An existing file of an output's name
         that predict did not write (no unchanged record in OUT/.flareseg-written.jsonl) is
         refused too unless --overwrite; predict's own outputs are replaced on a rerun. Two runs
         into one folder share the report (merged under a lock). A bad model folder (missing files,
         the parent of the real model folder, a fold_X folder, an absent --fold) also exits 2, as
         does an unknown, mistyped or out-of-range --config/--set key.
         Exit codes: 0 all written, 1 some cases failed (the rest written), 2 usage error.

settings: InferenceConfig's defaults, then the model folder's flareseg_inference.json (what stage-6
         measured / export-model stored), then the inference keys present in --config FILE, then
         each --set inference.KEY=VALUE, then the shortcut flags (--device, --no-skip, --tta, ...),
         each of which sets one inference key. The report lists the resolved inference config
         ("inference") and where each key that was set came from ("inference_from").

examples:
  flareseg predict -i scan.nii.gz -o out/ -m work/stage-6-ship/model
  flareseg predict -i /data/dicom/patient1 -o out/ -m work/stage-6-ship/model --device cpu --no-skip
  flareseg predict -i inputs/ -o outputs/ -m work/stage-6-ship/model --statistics --tta
  flareseg predict -i inputs/ -o outputs/ -m work/stage-6-ship/model --config my.yaml --set inference.step_size=0.7

"""

#: shortcut flag (argparse dest) -> (the InferenceConfig key it sets, the value an on/off flag sets;
#: None: the flag's parsed value)
FLAG_KEYS: dict[str, tuple[str, object]] = {
    "device": ("device", None), "no_skip": ("skip_windows", False), "skip_threshold": ("skip_threshold", None),
    "no_grow": ("skip_grow", False), "image_resampling": ("image_resampling", None), "tta": ("tta", True),
    "step_size": ("step_size", None), "batch_windows": ("batch_windows", None), "dtype": ("dtype", None),
    "no_crop": ("crop_to_body", False), "no_reorient": ("reorient", False), "runtime": ("runtime", None),
}


def resolve_inference(args: argparse.Namespace) -> tuple[InferenceConfig, dict[str, str]]:
    """The run's :class:`InferenceConfig` and where each key that was set came from: the
    defaults, then the model folder's settings (``-m``), then the inference keys present in
    ``--config FILE``, then ``--set inference.KEY=VALUE``, then the shortcut flags given (each
    sets one key; named ``--flag`` in the report), as :mod:`flareseg.inference.predict_settings`
    resolves them.  Raises :class:`ConfigError` naming the file/option and key (exit 2)."""
    from flareseg.inference.predict_settings import resolve_settings
    sets = list(getattr(args, "set", None) or [])
    for item in sets:
        key = item.split("=", 1)[0].strip()
        if not key.startswith("inference.") or "=" not in item:
            raise ConfigError(f"--set {item}: predict takes only inference.KEY=VALUE "
                              f"(keys: {', '.join(f.name for f in fields(InferenceConfig))})")
    flags = []
    for dest, (key, const) in FLAG_KEYS.items():
        given = getattr(args, dest, None)
        if given is None or given is False:      # flag not given: the earlier layers' value stands
            continue
        flags.append((f"--{dest.replace('_', '-')}", {key: given if const is None else const}))
    return resolve_settings(args.model, getattr(args, "config", None), sets, flags)


def run_predict(args: argparse.Namespace) -> int:
    from flareseg.inference.cold_start import process_age_seconds
    age_at_command = process_age_seconds()   # interpreter start + imports so far (cold-run report)
    try:
        cfg, came_from = resolve_inference(args)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    from flareseg.inference.batch import PredictJob, run_batch
    job = PredictJob(model=Path(args.model), cfg=cfg, input=Path(args.input), output=Path(args.output),
                     folds=tuple(f.strip() for f in args.fold.split(",")) if args.fold else None,
                     save_probabilities=args.save_probabilities, statistics=args.statistics,
                     report=Path(args.report) if args.report else None, preview=args.preview,
                     per_class=args.per_class, roi_subset=tuple(args.roi_subset) if args.roi_subset else None,
                     overwrite=getattr(args, "overwrite", False), trust_model=getattr(args, "trust_model", False),
                     quiet=args.quiet, config=getattr(args, "config", None), inference_from=came_from,
                     series=tuple(getattr(args, "series", None) or ()),
                     output_format=getattr(args, "output_format", "nifti"))
    from flareseg import distributed as dist
    from flareseg.nnunet.model import ModelFolderError
    try:   # every refusal comes before a folder is created or the model is loaded
        plan, report = run_batch(job, own_process=True, command_age=age_at_command)
    except (InputError, UnsafeOutput, ConfigError, ModelFolderError) as e:
        log.error("%s", e)
        return 2
    except dist.RankFailed:   # rank 0 said why
        return 2
    failed, n = report["cases_failed"], len(report["cases"])   # this rank's cases under torchrun
    print(f"{n - failed}/{n} cases written to {plan.folder}"
          + (f"; {failed} failed (see {plan.report.name})" if failed else ""))
    return 1 if failed else 0


def key_value(key: str):
    """argparse ``type=`` for the flag that sets ``inference.<key>``: the field's type (int or float)
    and its allowed range from :data:`flareseg.config.RANGES`, so a flag and the config key it sets
    have one bound; argparse's error names the flag (exit 2)."""
    from flareseg.config import RANGES
    kind = typing.get_type_hints(InferenceConfig)[key]
    allowed = RANGES["InferenceConfig"][key]
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} {allowed.describe()}, got {text!r}") from None
        if not allowed.contains(v):   # also false for NaN and inf
            what = f"{noun} " if kind is int else ""
            raise argparse.ArgumentTypeError(f"must be {what}{allowed.describe()}, got {text}")
        return v
    parse.__name__ = f"{noun} {allowed.describe()}"   # argparse's fallback message shows it
    return parse


def _choices(key: str) -> list[str]:
    """The allowed values of an InferenceConfig Literal field (the flag's choices)."""
    return list(typing.get_args(typing.get_type_hints(InferenceConfig)[key]))


def register(subparsers) -> None:
    D = InferenceConfig()   # the defaults the help shows (the flags themselves default to "not given")
    from flareseg.inference.runtimes import runtime_help   # the runtime table (torch-free)
    p = subparsers.add_parser(
        "predict", help="segment CT images with a trained model folder (fast predictor, GPU or CPU)",
        description="Predict FLARE23 label maps with an nnU-Net v2 model folder: resampling, "
                    "sliding window with window skipping and argmax run on the device.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="CT file, DICOM series folder, or folder of them")
    p.add_argument("-o", "--output", required=True, help="output folder (or .nii.gz file for one input file)")
    p.add_argument("-m", "--model", required=True,
                   help="nnU-Net model folder (dataset.json, plans.json, fold_X/checkpoint_final.pth)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML config whose inference section sets the predictor (a pipeline config or one "
                        "with only 'inference:'); see docs/pipeline.md for the keys")
    p.add_argument("--set", action="append", default=[], metavar="inference.KEY=VALUE",
                   help="override one inference key (repeatable); the flags below are shortcuts for these "
                        "and win over --config and --set")
    p.add_argument("--device", default=None, choices=_choices("device"), help=f"inference.device (default {D.device})")
    p.add_argument("--fold", default=None, help="fold(s) to use, e.g. 0 or 0,1,2 or all (default: every fold found)")
    p.add_argument("--no-skip", action="store_true",
                   help="predict every window (inference.skip_windows=false: window skipping off)")
    p.add_argument("--skip-threshold", type=key_value("skip_threshold"), default=None,
                   help="inference.skip_threshold: foreground voxels (>= 1) the indicator windows need to "
                        f"keep a plane (default {D.skip_threshold})")
    p.add_argument("--no-grow", action="store_true",
                   help="inference.skip_grow=false: skipping without the growth safeguard: do not run "
                        "skipped planes that touch foreground predicted next to them (faster, may cut organs "
                        "at the scan's ends)")
    p.add_argument("--image-resampling", default=None, choices=IMAGE_RESAMPLING,
                   help="inference.image_resampling, image to the model spacing: bspline (default) = stock "
                        "nnU-Net's order-3 spline computed "
                        "on the device, labels equal to nnUNetv2_predict's with --no-skip; linear = trilinear, "
                        "fastest on a CPU, boundaries differ slightly; nnunet = nnU-Net's own function on the CPU "
                        "(reference, slowest)")
    p.add_argument("--tta", action="store_true",
                   help="inference.tta=true: test-time mirroring over the model's allowed axes")
    p.add_argument("--step-size", type=key_value("step_size"), default=None,
                   help=f"inference.step_size: window step as a fraction of the patch, in (0, 1] (default {D.step_size})")
    p.add_argument("--batch-windows", type=key_value("batch_windows"), default=None,
                   help=f"inference.batch_windows: windows per network call, >= 0; 0 = auto: 4 on CUDA, 1 on a "
                        f"CPU, where batches are no faster and multiply memory (default {D.batch_windows})")
    p.add_argument("--dtype", default=None, choices=_choices("dtype"),
                   help=f"inference.dtype: network precision; auto = float16 on CUDA, bfloat16 on CPUs with "
                        f"AMX/AVX512-BF16, else float32; float16 on a CPU runs float32 (default {D.dtype})")
    p.add_argument("--runtime", default=None, choices=_choices("runtime"),
                   help=f"inference.runtime: what runs the network: {runtime_help()} (default {D.runtime})")
    p.add_argument("--no-crop", action="store_true",
                   help="inference.crop_to_body=false: run every sliding window, not only those that meet "
                        "the body's bounding box")
    p.add_argument("--no-reorient", action="store_true",
                   help="inference.reorient=false: feed the array to the network as stored; by default the array is "
                        "permuted and flipped (per its direction matrix) into the one orientation flareseg's import "
                        "gives training data (axial, LPS ascending) for prediction, and the labels are turned back "
                        "(output geometry is the input's either way; obliquity is never resampled)")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz softmax maps")
    p.add_argument("--statistics", action="store_true",
                   help="write class volumes, HU statistics per class and per tumor component, tumor burden "
                        "(statistics.json; schema in docs/statistics.md)")
    p.add_argument("--preview", action="store_true",
                   help="also write <name>_preview.png next to each label map (named after it): axial, "
                        "coronal and sagittal CT slices (W400/L40) with the label overlay and a legend of the "
                        "class names with their volumes (mL)")
    p.add_argument("--per-class", action="store_true",
                   help="also write one 0/1 mask per class, OUT/<case>/<class_name>.nii.gz, on the input grid")
    p.add_argument("--roi-subset", nargs="+", default=None, metavar="NAME",
                   help="the classes written as per-class masks (implies --per-class), e.g. liver tumor; "
                        "the model's class names (its dataset.json labels; FLARE23's for a flareseg model)")
    p.add_argument("--output-format", default="nifti", choices=["nifti", "dicom-seg"],
                   help="dicom-seg: for each DICOM series input also write <case>.dcm, a DICOM SEG object "
                        "referencing the series (one segment per class present; pip install "
                        "'flareseg[dicom-seg]'); the label map is written either way")
    p.add_argument("--report", default=None, help="run report path (default OUT/predict_report.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing files of the same names that predict did not write (by default "
                        "such a file is refused, exit 2; predict's own outputs of an earlier run are replaced "
                        "either way)")
    p.add_argument("--trust-model", action="store_true",
                   help="load checkpoints that need more than tensors and numpy numbers (plain unpickling: "
                        "code in the model folder can run; only for folders from a source you trust)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (they show only when stderr is a terminal: cases, and windows "
                        "done/total within a case)")
    p.set_defaults(func=run_predict)
    from flareseg.dicom import add_series_option
    add_series_option(p)
