"""Stage bookkeeping: folders, sub-steps, manifests and the skip rule.

A stage writes into ``work/stage-N-<name>/`` and finishes by writing ``manifest.json`` atomically
(inputs, outputs with sizes, resolved config and hash, versions, timings).  A stage whose manifest
key (its config sections + the manifests of the stages it reads) is unchanged and whose outputs
still exist is skipped.  Long stages record finished sub-steps in ``.steps/`` so a killed stage
resumes where it stopped.

Every stage writes through the write guard (:mod:`flareseg.write_guard`): before any work
:func:`check_stage_folder` refuses a stage folder that is, holds or lies inside one of the user's
inputs (the ``data.*`` paths, stage-2's member folders and models) and one that exists, is not
empty and is not the pipeline's (its ledger records none of the files; a folder made before ledgers
existed, or copied since (new inodes), is recognised by its ``config.resolved.json`` and adopted).  The stage folder is the
pipeline's as a whole: inside it every file goes through :func:`flareseg.io.atomic_path` (temp,
verify, rename) and is recorded in the folder's ledger, and a rerun may replace anything the stage
or nnU-Net wrote there.  Nothing outside ``work/stage-N-<name>/`` is written, and the only files a
stage deletes without writing them first are the temps a killed run of its own left.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flareseg import distributed as dist
from flareseg import write_guard
from flareseg.config import Config, ConfigError, config_hash, resolved, to_dict
from flareseg.io import read_json, remove_stale_temps, write_json
from flareseg.versions import versions
from flareseg.work_layout import STAGE_NAMES, stage_dir

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage cannot run (missing inputs, not built yet...); the message says what to do."""


class MissingInputs(StageError):
    pass


class StagePaused(StageError):
    """The stage did its share (e.g. one shard of stage-2) and wrote no manifest on purpose;
    not an error: the message says what to run next."""


#: the write guard's name for what the pipeline's stages write (their ledger entries)
PIPELINE = "pipeline"
#: the data keys naming a user's file or folder (with data.source = folders; label_types always)
DATA_PATH_KEYS = ("labeled_images", "labels", "unlabeled_images", "manifest", "label_types",
                  "validation_images", "validation_labels")


def user_inputs(cfg: Config, n: int = 6) -> dict[Path, str]:
    """The user's files and folders a run reads that stage ``n``'s folder must keep clear of, each
    with the config key naming it: the ``data.*`` paths (phantom runs make their data inside
    stage-1), and from stage 2 on stage-2's ``pseudolabel.member_label_dirs`` and the folders of
    ``pseudolabel.member_models`` (a member may be one of stage-1's own models, e.g. its
    ``checkpoint_best.pth``)."""
    out: dict[Path, str] = {}
    for key in DATA_PATH_KEYS:
        value = getattr(cfg.data, key)
        if value and (cfg.data.source == "folders" or key == "label_types"):
            out.setdefault(Path(value), f"data.{key}")
    if n < 2:
        return out
    for value in cfg.pseudolabel.member_label_dirs:
        out.setdefault(Path(value), "pseudolabel.member_label_dirs")
    for spec in cfg.pseudolabel.member_models:
        from flareseg.pseudolabel.members import parse_model_member
        out.setdefault(Path(parse_model_member(spec)[0]), "pseudolabel.member_models")
    return out


def stage_plan(cfg: Config, work: Path, n: int) -> write_guard.WritePlan:
    """The :class:`flareseg.write_guard.WritePlan` of stage ``n``: its folder and the two files
    every stage writes there, against every input of the run (:func:`user_inputs`); the folder
    may neither lie inside nor hold an input."""
    root = stage_dir(work, n)
    inputs = user_inputs(cfg, n)
    return write_guard.WritePlan(PIPELINE, root, [root / "config.resolved.json", root / "manifest.json"],
                                 input_folders=list(inputs), input_names={p: f"{k} input" for p, k in inputs.items()},
                                 overwrite=True, out_inside_input=False, input_inside_out=False, flag="--work")


def made_by_pipeline(root: Path) -> bool:
    """True when ``root`` holds the ``config.resolved.json`` every stage writes first (a JSON object
    with the config's sections): a stage folder flareseg made before stages kept a ledger, or one
    copied or moved since (a copy has new inodes, so the ledger no longer matches)."""
    try:
        doc = read_json(root / "config.resolved.json")
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"data", "inference"} <= set(doc)


def check_stage_folder(cfg: Config, work: Path, n: int) -> None:
    """Raise :class:`ConfigError` (one line, exit 2) unless stage ``n`` may write its folder
    (module docstring): no overlap with an input, and the folder new, empty (a log folder aside:
    the runner opens the stage's log first) or the pipeline's.  Creates nothing, but records a
    stage folder made before ledgers existed as the pipeline's."""
    root = stage_dir(work, n)
    try:
        if made_by_pipeline(root) and not write_guard.owns(root / "config.resolved.json", PIPELINE):
            if n == 4:   # stage-4's cleaned labels are clean's own (clean_folder replaces only those)
                from flareseg.cleaning.folder import adopt_earlier_clean
                adopt_earlier_clean(root)
            write_guard.adopt_tree(root, PIPELINE)
        write_guard.check_plan(stage_plan(cfg, work, n))
        if not write_guard.is_run_folder(root, PIPELINE, ignore=("logs",)):
            raise write_guard.UnsafeOutput(
                f"{root} exists, is not empty and is not a stage folder of flareseg's pipeline (no record in "
                f"its {write_guard.LEDGER}): refusing to write into it; use another --work or move it away")
    except write_guard.UnsafeOutput as e:
        raise ConfigError(f"stage-{n}: {e}") from None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def outputs_listing(paths: list[Path], root: Path) -> list[dict]:
    """Files under ``paths`` (files or folders) with their sizes, relative to ``root``."""
    out = []
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and "/." not in str(f))
        for f in files:
            out.append({"path": str(f.relative_to(root)) if f.is_relative_to(root) else str(f),
                        "bytes": f.stat().st_size})
    return out


@dataclass
class StageContext:
    """What a stage function gets: config, work folder, its own folder and step helpers."""
    n: int
    cfg: Config
    work: Path
    force: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return stage_dir(self.work, self.n)

    def upstream(self, n: int) -> dict:
        """The manifest of stage ``n``; raises MissingInputs naming the stage to run first."""
        m = stage_dir(self.work, n) / "manifest.json"
        if not m.exists():
            raise MissingInputs(f"stage-{self.n} needs the outputs of stage-{n} ({STAGE_NAMES[n]}), "
                                f"which has not finished in {self.work}: run `make stage-{n}` first")
        return read_json(m)

    def step(self, name: str, key: Any, fn: Callable[[], dict | None], outputs: list[Path] = (),
             collective: bool = False) -> dict:
        """Run ``fn`` unless a record with the same ``key`` exists and ``outputs`` exist (resume).

        Under torchrun (:mod:`flareseg.distributed`) rank 0 decides whether the step is current
        and writes its record; ``fn`` runs on rank 0 only (the others get its result) unless
        ``collective`` (a DDP training: every rank runs ``fn``, rank 0's result is recorded)."""
        rec_path = self.dir / ".steps" / f"{name}.json"
        k = _digest(key)

        def current() -> dict | None:
            if not self.force and rec_path.exists():
                rec = read_json(rec_path)
                if rec.get("key") == k and all(Path(o).exists() for o in outputs):
                    return rec
            return None

        rec = dist.on_main(current)
        if rec is not None:
            log.info("stage-%d: step %s is current, skipped", self.n, name)
            self.timings[name] = 0.0
            return rec.get("result") or {}
        log.info("stage-%d: step %s ...", self.n, name)
        t0 = time.time()
        result = (fn() or {}) if collective else dist.on_main(lambda: fn() or {})
        self.timings[name] = round(time.time() - t0, 2)
        if dist.is_main():
            write_json({"key": k, "result": result, "seconds": self.timings[name]}, rec_path)
        dist.barrier()
        return result


@dataclass(frozen=True)
class Stage:
    """A stage: number, the config sections it depends on, stages it reads, and its function."""
    n: int
    sections: tuple[str, ...]
    reads: tuple[int, ...]
    run: Callable[[StageContext], dict]

    def key(self, cfg: Config, work: Path) -> str:
        d = to_dict(cfg)
        part = {s: d[s] for s in self.sections}
        ups = {}
        for u in self.reads:
            m = stage_dir(work, u) / "manifest.json"
            ups[u] = read_json(m).get("key") if m.exists() else None
        return _digest({"stage": self.n, "config": part, "upstream": ups})

    def is_current(self, cfg: Config, work: Path) -> bool:
        m = stage_dir(work, self.n) / "manifest.json"
        if not m.exists():
            return False
        man = read_json(m)
        if man.get("key") != self.key(cfg, work):
            return False
        return all((Path(work) / o["path"]).exists() for o in man.get("outputs", []))

    def execute(self, cfg: Config, work: Path, force: bool = False) -> dict:
        """Run the stage (or skip it when current).  Under torchrun every rank calls this; rank 0
        alone cleans up, decides the skip and writes config, step records and the manifest."""
        work = Path(work)

        def prepare() -> bool:
            check_stage_folder(cfg, work, self.n)   # before anything is written or removed there
            if stage_dir(work, self.n).is_dir():   # what a killed run of this stage left half-written
                remove_stale_temps(stage_dir(work, self.n), recursive=True)
            return not force and self.is_current(cfg, work)

        if dist.on_main(prepare):
            log.info("stage-%d (%s) is current: skipped (use --force to rerun)", self.n, STAGE_NAMES[self.n])
            return read_json(stage_dir(work, self.n) / "manifest.json") | {"skipped": True}
        ctx = StageContext(self.n, cfg, work, force)
        for u in self.reads:
            ctx.upstream(u)
        # every file renamed into the stage folder is recorded in its ledger as the pipeline's
        with write_guard.recording(ctx.dir, PIPELINE, overwrite=True):
            return self._run(ctx, t0=time.time())

    def _run(self, ctx: StageContext, t0: float) -> dict:
        cfg, work = ctx.cfg, ctx.work
        if dist.is_main():
            write_guard.compact(ctx.dir)
            write_json(resolved(cfg), ctx.dir / "config.resolved.json")
        dist.barrier()
        try:
            result = self.run(ctx)
        except write_guard.UnsafeOutput as e:   # a command the stage runs refused an output: one line
            raise StageError(f"stage-{self.n}: {e}") from None
        if not dist.is_main():   # rank 0 writes the manifest; the others wait for it
            dist.barrier()
            return read_json(ctx.dir / "manifest.json")
        outputs = result.pop("outputs", [])
        manifest = {
            "stage": self.n, "name": STAGE_NAMES[self.n], "key": self.key(cfg, work),
            "config_hash": config_hash(cfg), "config": resolved(cfg),
            "inputs": {f"stage-{u}": str(stage_dir(work, u) / "manifest.json") for u in self.reads},
            "outputs": outputs_listing([Path(o) for o in outputs], work),
            "result": result, "versions": versions(),
            "timings": {"total_seconds": round(time.time() - t0, 2), "steps": ctx.timings},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(manifest, ctx.dir / "manifest.json")
        dist.barrier()
        return manifest
