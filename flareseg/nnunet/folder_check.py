"""Is a user's folder an nnU-Net model folder? Checked before anything is loaded, one line per problem.

A missing path, a file, a folder without ``plans.json``/``dataset.json``/``fold_*/checkpoint_*.pth``
(suggesting the model folder found inside or around it), JSON files that are not nnU-Net's, a model
with more than one input channel, a requested fold without a checkpoint, or a plans.json/dataset.json
that does not fit the checkpoints (labels, configuration, architecture: :mod:`flareseg.nnunet.model_check`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from flareseg.io import InputError
from flareseg.nnunet.model import CHECKPOINTS, available_folds, network_for_check
from flareseg.nnunet.model_check import check_labels, check_model_against_checkpoint


EXPECTED = "expected plans.json, dataset.json and fold_*/checkpoint_final.pth"


def missing_model_files(path: str | Path) -> list[str]:
    """What ``path`` lacks to be an nnU-Net model folder (empty: it is one)."""
    p = Path(path)
    missing = [n for n in ("plans.json", "dataset.json") if not (p / n).is_file()]
    if not available_folds(p):
        missing.append("fold_*/checkpoint_*.pth")
    return missing


def find_model_folders(path: str | Path, depth: int = 3, limit: int = 3, max_dirs: int = 2000) -> list[Path]:
    """Model folders near ``path``: the enclosing one when ``path`` is a ``fold_X`` folder or a
    checkpoint file, else those nested up to ``depth`` levels below it (at most ``limit``, looking
    into at most ``max_dirs`` folders so that a user's home folder stays quick)."""
    p = Path(path)
    for up in (p.parent, p.parent.parent):
        if up != p and (p.name.startswith("fold_") or p.parent.name.startswith("fold_")) \
                and not missing_model_files(up):
            return [up]
    found: list[Path] = []
    level = [p] if p.is_dir() else []
    for _ in range(depth):
        nxt = []
        for d in level:
            max_dirs -= 1
            if max_dirs < 0:
                return found
            try:
                subs = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
            except OSError:
                continue
            for c in subs:
                if not missing_model_files(c):
                    found.append(c)
                    if len(found) >= limit:
                        return found
                else:
                    nxt.append(c)
        level = nxt
    return found


def _json_dict(path: Path, key: str) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"not readable as JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), dict) or not obj[key]:
        raise InputError(path, f"has no '{key}' mapping: not an nnU-Net {path.name}")
    return obj


def check_model_folder(path: str | Path, folds: Sequence[int | str] | None = None,
                       checkpoint: str | None = None, deep: bool = True) -> Path:
    """Validate a model folder before loading it; return it. Raises :class:`InputError` (one line,
    naming the path) for a missing path, a file, a folder without ``plans.json``/``dataset.json``/
    ``fold_*/checkpoint_*.pth`` (suggesting the model folder found inside or around it), JSON files
    that are not nnU-Net's, a model with more than one input channel, or a requested fold that has
    no checkpoint (listing the available ones).  ``deep``: also each checkpoint against the plans
    and dataset.json (labels, configuration, architecture, tensor shapes; see
    :func:`check_checkpoints`), so an inconsistent folder is refused before any output exists."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "model folder does not exist")
    if not p.is_dir():
        hint = find_model_folders(p)
        raise InputError(p, f"is a file, not a model folder ({EXPECTED})"
                            + (f"; the model folder is {hint[0]}" if hint else ""))
    missing = missing_model_files(p)
    if missing:
        hint = find_model_folders(p)
        tail = ""
        if len(hint) == 1:
            tail = f"; did you mean {hint[0]}?"
        elif hint:
            tail = "; model folders inside: " + ", ".join(str(h) for h in hint)
        raise InputError(p, f"not a model folder, missing {', '.join(missing)} ({EXPECTED}){tail}")
    plans = _json_dict(p / "plans.json", "configurations")
    dataset = _json_dict(p / "dataset.json", "labels")
    check_labels(dataset, p / "dataset.json")
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if isinstance(channels, dict) and len(channels) > 1:
        raise InputError(p / "dataset.json", f"the model has {len(channels)} input channels; "
                                             "the fast predictor handles single-channel CT")
    if folds is not None:
        have = available_folds(p, checkpoint)
        absent = [str(f) for f in folds if str(f) not in have]
        if absent:
            names = checkpoint or "checkpoint_*.pth"
            raise InputError(p, f"fold {', '.join(absent)} not found (no fold_{absent[0]}/{names}); "
                                f"available folds: {', '.join(have) or 'none'}")
    if deep:
        check_checkpoints(p, plans, dataset, folds, checkpoint)
    return p


def check_checkpoints(p: Path, plans: dict, dataset: dict, folds: Sequence[int | str] | None = None,
                      checkpoint: str | None = None) -> None:
    """Each fold's checkpoint (the one loading would pick) against the plans and dataset.json:
    trainer, configuration, tensor names and shapes (:mod:`flareseg.nnunet.model_check`).  The
    files are memory-mapped, not read.  A checkpoint that needs ``--trust-model`` is left to the
    loader (which knows whether the user trusts it); a damaged one is refused here."""
    from flareseg.nnunet.checkpoint import UntrustedCheckpoint, load_checkpoint
    names = [checkpoint] if checkpoint else list(CHECKPOINTS)
    loaded = {}
    for f in ([str(f) for f in folds] if folds is not None else available_folds(p, checkpoint)):
        path = next((p / f"fold_{f}" / n for n in names if (p / f"fold_{f}" / n).is_file()), None)
        if path is None:
            continue
        try:
            loaded[path] = load_checkpoint(path, mmap=True)
        except UntrustedCheckpoint:
            continue
    check_model_against_checkpoint(p, plans, dataset, loaded, network_for_check)


def model_class_names(path: str | Path) -> list[str]:
    """The foreground class names of a (checked) model folder, in label-index order, from its
    dataset.json ``labels`` (name -> index; index 0 and region labels, which are lists, left out)."""
    labels = _json_dict(Path(path) / "dataset.json", "labels")["labels"]
    ints = {n: v for n, v in labels.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}
    return sorted(ints, key=ints.__getitem__)
