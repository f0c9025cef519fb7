"""Publish a staged predict run into the real output folder through the write guard.

The Docker entry point (``docker/predict.sh``) predicts as an unprivileged user into a private
staging folder when the mounted output folder is root's, and root then publishes the finished
files.  Publishing is a write like any other (:mod:`flareseg.write_guard`):

* ``check``, before the prediction: the label maps predict will write for ``INPUT_DIR`` (one
  ``<case>.nii.gz`` per case of :func:`flareseg.cases.list_cases`) are checked against the inputs, the
  model's files and the files in ``OUTPUT_DIR`` predict did not write (refused unless
  ``--overwrite``), so a refusal comes before any work;
* ``publish``, after it: every file of the staging folder is planned and checked again, then
  copied to a temp in ``OUTPUT_DIR``, verified (its size), recorded in ``OUTPUT_DIR``'s ledger as
  predict's and renamed onto its name, so a later run -- staged or writing directly -- recognises
  and replaces its own files and never a file it did not write.

``python -m flareseg.inference.publish check|publish ...``: exit 0; 2 with one line naming the
file and the reason (refused: nothing published); 1 when a copy failed (an OS error: the files
renamed before it are complete, no partial file is left under a real name); 130 / 143 on Ctrl-C /
SIGTERM (``docker stop``), with one line: the file being copied is removed, finished files stay.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from flareseg import write_guard
from flareseg.boundary import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, sigterm_unwinds
from flareseg.cases import list_cases
from flareseg.errors import InputError
from flareseg.io import atomic_path
from flareseg.write_guard import LEDGER, UnsafeOutput, WritePlan, check_plan, input_files

#: the command the published files are recorded for: they are predict's outputs
COMMAND = "predict"


def _plan(files: Sequence[Path], output_dir: Path, input_dir: Path, model_dir: Path, overwrite: bool) -> WritePlan:
    """predict's rules: the outputs against the input and model files; OUTPUT_DIR may lie inside
    or hold the input folder (its files are checked one by one)."""
    folders = [p for p in (input_dir, model_dir) if p.is_dir()]
    return WritePlan(COMMAND, output_dir, list(files), reads=input_files([input_dir, model_dir]),
                     input_folders=folders, overwrite=overwrite, out_inside_input=True, input_inside_out=True,
                     flag="OUTPUT_DIR", input_names={input_dir: "INPUT_DIR folder", model_dir: "model folder"})


def check(input_dir: os.PathLike | str, output_dir: os.PathLike | str, model_dir: os.PathLike | str,
          overwrite: bool = False) -> None:
    """Raise :class:`UnsafeOutput` (or :class:`InputError` for an unreadable input) when predict's
    label maps for ``input_dir`` may not be published into ``output_dir``; creates nothing."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    labels = [output_dir / f"{case}.nii.gz" for case in list_cases(input_dir, dicom=True)]
    check_plan(_plan(labels, output_dir, input_dir, Path(model_dir), overwrite))


def staged_files(staged: Path) -> list[Path]:
    """The files a staged run left to publish: regular files, hidden ones (the ledger, temps) aside."""
    return sorted(p for p in Path(staged).iterdir() if p.is_file() and not p.is_symlink()
                  and not p.name.startswith("."))


def publish(staged: os.PathLike | str, output_dir: os.PathLike | str, input_dir: os.PathLike | str,
            model_dir: os.PathLike | str, overwrite: bool = False) -> list[Path]:
    """Copy every file of ``staged`` into ``output_dir`` through the write guard (module docstring);
    returns the published paths.  The whole set is checked before the first copy."""
    staged, output_dir = Path(staged), Path(output_dir)
    files = staged_files(staged)
    dests = [output_dir / f.name for f in files]
    check_plan(_plan(dests, output_dir, Path(input_dir), Path(model_dir), overwrite))
    with write_guard.recording(output_dir, COMMAND, overwrite):
        for f, dest in zip(files, dests):
            size = f.stat().st_size
            with atomic_path(dest, verify=lambda p, n=size: None if p.stat().st_size == n
                             else f"{p.stat().st_size} of {n} bytes copied") as tmp:
                shutil.copyfile(f, tmp)
    return dests


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flareseg.inference.publish", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("check", help="before predicting: may predict's label maps be published?")
    c.add_argument("input_dir", type=Path)
    c.add_argument("output_dir", type=Path)
    c.add_argument("model_dir", type=Path)
    q = sub.add_parser("publish", help="after predicting: publish the staged files")
    q.add_argument("staged", type=Path)
    q.add_argument("output_dir", type=Path)
    q.add_argument("input_dir", type=Path)
    q.add_argument("model_dir", type=Path)
    for s in (c, q):
        s.add_argument("--overwrite", action="store_true", help="replace files predict did not write")
    args = p.parse_args(argv)
    try:
        # SIGTERM (docker stop) unwinds like Ctrl-C: the temp being copied is removed, finished files stay
        with sigterm_unwinds():
            if args.what == "check":
                check(args.input_dir, args.output_dir, args.model_dir, args.overwrite)
                return 0
            done = publish(args.staged, args.output_dir, args.input_dir, args.model_dir, args.overwrite)
    except (UnsafeOutput, InputError) as e:   # refused: nothing published
        print(f"predict.sh: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"predict.sh: publishing {how}; the file being copied was removed, finished files stay",
              file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except OSError as e:                       # disk full, read-only: what was renamed is complete
        print(f"predict.sh: publishing into {args.output_dir} failed: {e}", file=sys.stderr)
        return 1
    print(f"predict.sh: {len(done)} file(s) published to {args.output_dir} (recorded in its {LEDGER})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
