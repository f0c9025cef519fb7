"""Fail before work: what the stages of a run will need, checked at its start.

A run of ``all`` checks every stage that will run (not the current ones, which are skipped);
``stage-N`` checks stage N.  Each need is tied to the config key that asks for it:

* devices: ``train_fine.device`` (stage 1), ``inference.device`` and ``inference.runtime``
  (stages 2 and 6), ``train_coarse.device`` (stage 5) — ``cuda`` without a CUDA device, or a
  runtime that cannot run on the device, is refused here, not after import, preprocessing and
  training;
* stage 2's members: ``pseudolabel.member_label_dirs`` must be folders, ``member_models`` model
  folders fitting their checkpoints, and the member keys must combine
  (:func:`flareseg.pseudolabel.members.check_members`);
* the stage folders (given the work folder): none may be, hold or lie inside an input of the run,
  and one that exists must be the pipeline's (:mod:`flareseg.write_guard`).

Every problem is a :class:`flareseg.config.ConfigError` naming the key (exit 2).  The data folders
of stage 1 are checked by the runner itself (``missing_data_folders``, exit 3).
"""
from __future__ import annotations

from typing import Iterable

from flareseg.config import Config, ConfigError
from flareseg.errors import InputError, short_repr

#: stage -> the device keys (section, field) it runs on
STAGE_DEVICES: dict[int, tuple[str, ...]] = {1: ("train_fine",), 2: ("inference",), 5: ("train_coarse",),
                                             6: ("inference",)}


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def device_problems(cfg: Config, stages: Iterable[int]) -> list[str]:
    """One line per device key of ``stages`` that this machine cannot honour."""
    out: list[str] = []
    seen: set[str] = set()
    for n in sorted(set(stages)):
        for section in STAGE_DEVICES.get(n, ()):
            if section in seen:
                continue
            seen.add(section)
            device = getattr(cfg, section).device
            if device == "cuda" and not _cuda_available():
                out.append(f"key '{section}.device' = 'cuda' (stage-{n}), but no CUDA device is available "
                           "on this machine: use cpu or auto")
            elif section == "inference" and cfg.inference.runtime != "torch":
                from flareseg.inference.runtimes import resolve_runtime
                _, problem = resolve_runtime(cfg.inference.runtime, device)
                if problem:
                    out.append(f"key 'inference.runtime' = {short_repr(cfg.inference.runtime)} "
                               f"(stage-{n}): {problem}")
    return out


def member_problems(cfg: Config) -> list[str]:
    """Stage 2's member folders and key combinations (one line each)."""
    from pathlib import Path

    from flareseg.nnunet.folder_check import check_model_folder
    from flareseg.pseudolabel.members import check_members, parse_model_member
    pc = cfg.pseudolabel
    out: list[str] = []
    for d in pc.member_label_dirs:
        p = Path(d)
        if not p.is_dir():
            what = "does not exist" if not p.exists() else "is not a folder"
            out.append(f"key 'pseudolabel.member_label_dirs': {p} {what} (stage-2)")
    for spec in pc.member_models:
        folder, ckpt = parse_model_member(spec)
        try:
            check_model_folder(folder, checkpoint=ckpt)
        except InputError as e:
            out.append(f"key 'pseudolabel.member_models': {' '.join(str(e).split())} (stage-2)")
    if not out:
        try:
            check_members(pc)
        except ValueError as e:   # ConfigError included
            out.append(f"{' '.join(str(e).split())} (stage-2)")
    return out


#: training stage -> (plan section holding its global batch, train section holding gpus/nodes)
STAGE_BATCH: dict[int, tuple[str, str]] = {1: ("fine", "train_fine"), 5: ("coarse", "train_coarse")}


def batch_problems(cfg: Config, stages: Iterable[int]) -> list[str]:
    """Training stages whose global batch is smaller than their processes (``gpus`` x ``nodes``)."""
    from flareseg.distributed import batch_problem
    out = []
    for n in sorted(set(stages) & set(STAGE_BATCH)):
        plan, train = STAGE_BATCH[n]
        tc = getattr(cfg, train)
        problem = batch_problem(getattr(cfg, plan).batch_size, tc.gpus * tc.nodes, f"{plan}.batch_size")
        if problem:
            out.append(f"{problem} (stage-{n} trains on {train}.gpus x {train}.nodes processes)")
    return out


def folder_problems(cfg: Config, stages: Iterable[int], work) -> list[str]:
    """Stage folders the write guard refuses (:func:`flareseg.pipeline.stage.check_stage_folder`):
    one that is, holds or lies inside an input of the run, or exists and is not the pipeline's."""
    from flareseg.pipeline.stage import check_stage_folder
    out = []
    for n in sorted(set(stages)):
        try:
            check_stage_folder(cfg, work, n)
        except ConfigError as e:
            out.append(str(e))
    return out


def preflight(cfg: Config, stages: Iterable[int], src: str = "<config>", work=None) -> None:
    """Raise :class:`ConfigError` (the first problem, naming ``src`` and the key) when a stage of
    ``stages`` needs a device, folder or member that is not there, or (given the ``work`` folder)
    would write where the write guard refuses (:func:`folder_problems`)."""
    stages = sorted(set(stages))
    problems = batch_problems(cfg, stages) + device_problems(cfg, stages)
    if 2 in stages:
        problems += member_problems(cfg)
    if work is not None:
        problems += folder_problems(cfg, stages, work)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ConfigError(f"{src}: {problems[0]}{more}")
