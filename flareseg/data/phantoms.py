"""Synthetic partially labeled abdominal CT phantoms: the embedded default data set.

:func:`write_phantoms` writes a FLARE23-like folder (the importer reads exactly this)::

    OUT/
      imagesTr/<case>_0000.nii.gz     labeled + tumor-only images (int16 HU)
      labelsTr/<case>.nii.gz          partial labels: only the annotated classes, others 0
      unlabeledTr/<case>_0000.nii.gz  unlabeled images
      imagesVal/<case>_0000.nii.gz    held-out validation images
      labelsVal/<case>.nii.gz         their full labels (all 14 classes)
      hidden_gt/<case>.nii.gz         full ground truth of every training case (labeled,
                                      tumor-only, unlabeled), to measure pseudo-label quality
      manifest.csv                    `case_id,annotated` for the cases in labelsTr, annotated =
                                      space-separated classes, e.g. `PH_0003,1 14`
      phantoms.json                   config, seed and per case: pool, group, annotated classes,
                                      spacing, size, origin, direction, phase, tumors

Case ids ``PH_0000, PH_0001, ...`` run over the pools in the order labeled, tumor-only,
unlabeled, validation.  Labeled cases get the FLARE23 partial-label groups of
:data:`LABELED_GROUPS` (each at least once when the count allows, the rest drawn by weight);
tumors of the organ-specific groups sit only in that organ, so a written label equals the hidden
ground truth with the unannotated classes set to 0 (so in an ``all_organs`` case a tumor inside
the liver is a 0-hole: tumor is present but not annotated).  Everything is a function of ``cfg`` (seed
included): a rerun gives byte-identical arrays.  With ``overwrite=False`` a case whose files exist
and whose entry in an existing ``phantoms.json`` of the same config and generator version is
present is not regenerated;
files of cases the config no longer asks for (``PH_*`` names in these folders) are removed.
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from flareseg.config import PhantomConfig, to_dict
from flareseg.data.phantom_case import ORIENTATIONS, generate_case
from flareseg.data.phantom_tumors import TUMOR_HOSTS
from flareseg import write_guard
from flareseg.io import read_json, write_array, write_json, write_text
from flareseg.write_guard import WritePlan, check_plan
from flareseg.labels import FOREGROUND, ORGANS, TUMOR, LabelType

__all__ = ["LABELED_GROUPS", "POOLS", "CasePlan", "generate_case", "partial_label",
           "group_counts", "plan_cases", "write_phantoms"]

log = logging.getLogger(__name__)

#: FLARE23-like partial-label groups of the labeled pool -> annotated classes
LABELED_GROUPS: dict[str, LabelType] = {
    "all_organs_tumor": FOREGROUND,
    "all_organs": ORGANS,
    "liver_tumor": (1, TUMOR),
    "kidneys_tumor": (2, 13, TUMOR),
    "pancreas_tumor": (4, TUMOR),
}
GROUP_WEIGHTS = {"all_organs_tumor": 0.2, "all_organs": 0.3, "liver_tumor": 0.2,
                 "kidneys_tumor": 0.15, "pancreas_tumor": 0.15}
OTHER_GROUPS: dict[str, LabelType] = {"tumor_only": (TUMOR,), "unlabeled": (), "full": FOREGROUND}
#: group -> (tumor host organs, min tumors, max tumors)
GROUP_TUMORS: dict[str, tuple[tuple[int, ...], int, int]] = {
    "all_organs_tumor": (TUMOR_HOSTS, 0, 3), "all_organs": (TUMOR_HOSTS, 0, 3),
    "liver_tumor": ((1,), 1, 3), "kidneys_tumor": ((2, 13), 1, 2), "pancreas_tumor": ((4,), 1, 1),
    "tumor_only": (TUMOR_HOSTS, 1, 3), "unlabeled": (TUMOR_HOSTS, 0, 3), "full": (TUMOR_HOSTS, 0, 3)}
POOLS = ("labeled", "tumor_only", "unlabeled", "validation")
ORIENTATION_CYCLE = ("identity", "flip_xy", "identity", "flip_z")
#: bump when the generator's output changes, so reruns regenerate instead of reusing old files
#: (6: adult kidney and spleen volumes, the spleen's concave visceral surface; 5 was arm F's, reverted)
GENERATOR_VERSION = 6
_CASE_FILE = re.compile(r"^PH_\d{4,}(_0000)?\.nii\.gz$")
_DIRS = ("imagesTr", "labelsTr", "unlabeledTr", "imagesVal", "labelsVal", "hidden_gt")


@dataclass(frozen=True)
class CasePlan:
    """What one case will be: id, pool, label group, tumors wanted, orientation."""

    index: int
    case_id: str
    pool: str
    group: str
    annotated: LabelType
    tumor_hosts: tuple[int, ...]
    n_tumors: int
    orientation: str

    def files(self) -> dict[str, str]:
        """Relative output paths of this case by role (image, label, hidden_gt)."""
        c = self.case_id
        if self.pool == "validation":
            return {"image": f"imagesVal/{c}_0000.nii.gz", "label": f"labelsVal/{c}.nii.gz"}
        if self.pool == "unlabeled":
            return {"image": f"unlabeledTr/{c}_0000.nii.gz", "hidden_gt": f"hidden_gt/{c}.nii.gz"}
        return {"image": f"imagesTr/{c}_0000.nii.gz", "label": f"labelsTr/{c}.nii.gz",
                "hidden_gt": f"hidden_gt/{c}.nii.gz"}


def _check(cfg: PhantomConfig) -> None:
    for name in ("labeled", "tumor_only", "unlabeled", "validation"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"phantoms: '{name}' must be >= 0, got {getattr(cfg, name)}")
    for name in ("size_xy", "inplane_spacing", "slice_spacing", "extent_z_mm"):
        lo, hi = getattr(cfg, name)
        if not 0 < lo <= hi:
            raise ValueError(f"phantoms: '{name}' must be a range 0 < lo <= hi, got {(lo, hi)}")
    if cfg.size_xy[0] < 16:
        raise ValueError(f"phantoms: 'size_xy' must be at least 16 voxels, got {cfg.size_xy}")
    if cfg.group_weights is not None:
        unknown = sorted(set(cfg.group_weights) - set(LABELED_GROUPS))
        if unknown:
            raise ValueError(f"phantoms: 'group_weights' has unknown group(s) {unknown} "
                             f"(valid: {', '.join(LABELED_GROUPS)})")
        if not _weighted_groups(cfg.group_weights):
            raise ValueError("phantoms: 'group_weights' must give at least one group a weight > 0")


def _weighted_groups(weights: dict[str, float]) -> list[str]:
    """The labeled groups ``weights`` gives a share, in ``LABELED_GROUPS`` order."""
    return [g for g in LABELED_GROUPS if weights.get(g, 0) > 0]


def group_counts(n: int, weights: dict[str, float], tie_order: np.ndarray | None = None) -> dict[str, int]:
    """How many of ``n`` labeled cases each group gets: the weights' share, apportioned by largest
    remainder (Hamilton), so a small pool holds the configured mix instead of a noisy draw from it
    (16 i.i.d. draws of the 50 % all-organ mix gave 5 all-organ cases at seed 0).  Ties of the
    remainder go by ``tie_order`` (a permutation of the weighted groups; default: their order).
    Every weighted group gets a case where ``n`` allows, taken from the largest group."""
    names = _weighted_groups(weights)
    w = np.array([weights[g] for g in names], dtype=float)
    quota = n * w / w.sum()
    counts = np.floor(quota + 1e-9).astype(int)
    order = np.arange(len(names)) if tie_order is None else np.asarray(tie_order)
    by_remainder = sorted(range(len(names)), key=lambda i: (-round(quota[i] - counts[i], 9), order[i]))
    counts[by_remainder[: n - int(counts.sum())]] += 1
    while n >= len(names) and (counts == 0).any():
        counts[int(np.argmax(counts))] -= 1
        counts[int(np.flatnonzero(counts == 0)[0])] += 1
    return {g: int(c) for g, c in zip(names, counts)}


def _labeled_groups(rng: np.random.Generator, n: int, weights: dict[str, float] | None = None) -> list[str]:
    weights = GROUP_WEIGHTS if weights is None else weights
    tie_order = rng.permutation(len(_weighted_groups(weights)))
    out = [g for g, c in group_counts(n, weights, tie_order).items() for _ in range(c)]
    return [out[i] for i in rng.permutation(len(out))]


def plan_cases(cfg: PhantomConfig) -> list[CasePlan]:
    """Deterministic plan of every case (ids, pools, groups, tumors, orientation) from ``cfg``."""
    _check(cfg)
    rng = np.random.default_rng([cfg.seed, 0])
    groups = {"labeled": _labeled_groups(rng, cfg.labeled, cfg.group_weights), "tumor_only": ["tumor_only"] * cfg.tumor_only,
              "unlabeled": ["unlabeled"] * cfg.unlabeled, "validation": ["full"] * cfg.validation}
    plans, index = [], 0
    for pool in POOLS:
        offset = int(rng.integers(len(ORIENTATION_CYCLE)))
        for i, group in enumerate(groups[pool]):
            annotated = LABELED_GROUPS.get(group, OTHER_GROUPS.get(group))
            hosts, lo, hi = GROUP_TUMORS[group]
            plans.append(CasePlan(index, f"PH_{index:04d}", pool, group, tuple(annotated), hosts,
                                  int(rng.integers(lo, hi + 1)),
                                  ORIENTATION_CYCLE[(i + offset) % len(ORIENTATION_CYCLE)]))
            index += 1
    return plans


def partial_label(full: np.ndarray, annotated: Iterable[int]) -> np.ndarray:
    """Keep only the ``annotated`` classes of a full ``(Z, Y, X)`` label map; others become 0."""
    lut = np.zeros(256, dtype=full.dtype)
    for c in annotated:
        lut[int(c)] = c
    return lut[full]


def make_case(plan: CasePlan, cfg: PhantomConfig, attempts: int = 5):
    """Generate the phantom of ``plan``: ``(image, full_label, geometry, info)``.

    A case that asks for tumors but whose tumors all miss the grid is redrawn (deterministically,
    up to ``attempts`` times) so tumor-annotated groups really contain a tumor.
    """
    for attempt in range(attempts):
        rng = np.random.default_rng([cfg.seed, 1, plan.index, attempt])
        image, full, geo, info = generate_case(rng, cfg, tumor_hosts=plan.tumor_hosts,
                                               n_tumors=plan.n_tumors, orientation=plan.orientation)
        if plan.n_tumors == 0 or info["tumors"] > 0:
            break
    info = {"case_id": plan.case_id, "pool": plan.pool, "group": plan.group,
            "annotated": list(plan.annotated), **info, "files": plan.files()}
    return image, full, geo, info


def _write_case(plan: CasePlan, cfg: PhantomConfig, out: Path) -> dict[str, Any]:
    image, full, geo, info = make_case(plan, cfg)
    files = plan.files()
    write_array(image, geo, out / files["image"])
    if "hidden_gt" in files:
        write_array(full, geo, out / files["hidden_gt"])
    if "label" in files:
        write_array(partial_label(full, plan.annotated), geo, out / files["label"])
    return info


def _reusable(out: Path, cfg: PhantomConfig) -> dict[str, dict]:
    """Entries of an existing phantoms.json written with the same config (else empty)."""
    try:
        old = read_json(out / "phantoms.json")
    except (OSError, ValueError):
        return {}
    was = old.get("config") or {}
    # a key added since (None: the old behaviour) does not make an earlier folder stale
    now = {k: v for k, v in to_dict(cfg).items() if not (v is None and k not in was)}
    if was != now or old.get("generator_version") != GENERATOR_VERSION:
        return {}
    return {cid: e for cid, e in old.get("cases", {}).items()
            if all((out / f).is_file() for f in e.get("files", {}).values())}


def _remove_stale(out: Path, plans: Sequence[CasePlan]) -> None:
    """Delete ``PH_*`` case files in the layout folders that ``plans`` do not produce, when
    phantoms wrote them (the folder's ledger, :mod:`flareseg.write_guard`); others stay."""
    keep = {f for p in plans for f in p.files().values()}
    for d in _DIRS:
        if (out / d).is_dir():
            for f in sorted((out / d).iterdir()):
                if (_CASE_FILE.match(f.name) and f"{d}/{f.name}" not in keep
                        and write_guard.remove_owned(f, "phantoms")):
                    log.info("removed %s (not part of this phantom config)", f)


def phantom_plan(out: Path, plans: Sequence[CasePlan], overwrite: bool = False) -> WritePlan:
    """The :class:`flareseg.write_guard.WritePlan` of a phantom set: every case file, the manifest
    and phantoms.json; an existing file of those names that phantoms did not write is refused
    unless ``overwrite``."""
    files = [out / f for p in plans for f in p.files().values()] + [out / "manifest.csv", out / "phantoms.json"]
    return WritePlan("phantoms", out, files, overwrite=overwrite, flag="--out")


def _adopt_earlier_phantoms(out: Path) -> None:
    """Record as phantoms' own what a phantoms run wrote before ledgers existed (its phantoms.json
    lists every case's files)."""
    if (out / write_guard.LEDGER).exists():
        return
    try:
        old = read_json(out / "phantoms.json")
        files = [out / f for e in old["cases"].values() for f in e.get("files", {}).values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    write_guard.adopt([*files, out / "manifest.csv", out / "phantoms.json"], "phantoms")


def write_phantoms(out: Path, cfg: PhantomConfig, overwrite: bool = False, workers: int = 1,
                   progress: bool = True) -> dict[str, Any]:
    """Write the phantom data set of ``cfg`` into ``out`` (layout in the module docstring).

    Returns the content of ``phantoms.json``.  ``workers > 1`` generates cases in parallel
    processes (same result).  Raises :class:`flareseg.write_guard.UnsafeOutput` before any work
    when a file of an output name exists that phantoms did not write (unless ``overwrite``).
    """
    out = Path(out)
    plans = plan_cases(cfg)
    if out.is_dir():
        _adopt_earlier_phantoms(out)
    check_plan(phantom_plan(out, plans, overwrite))
    with write_guard.recording(out, "phantoms", overwrite):
        write_guard.compact(out)
        return _write_phantoms(out, cfg, plans, overwrite, workers, progress)


def _write_phantoms(out: Path, cfg: PhantomConfig, plans: list[CasePlan], overwrite: bool, workers: int,
                    progress: bool) -> dict[str, Any]:
    reuse = {} if overwrite else _reusable(out, cfg)
    _remove_stale(out, plans)
    todo = [p for p in plans if p.case_id not in reuse]
    infos: dict[str, dict] = {p.case_id: reuse[p.case_id] for p in plans if p.case_id in reuse}
    if reuse:
        log.info("phantoms: %d of %d cases already written, skipping them", len(infos), len(plans))
    bar = tqdm(total=len(todo), desc="phantoms", unit="case", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            futures = [ex.submit(_write_case, p, cfg, out) for p in todo]
            for p, fut in zip(todo, futures):
                infos[p.case_id] = fut.result()
                bar.update()
    else:
        for p in todo:
            infos[p.case_id] = _write_case(p, cfg, out)
            bar.update()
    bar.close()
    # worker processes record what they write; the planned case files are phantoms' either way
    write_guard.adopt([out / f for p in todo for f in p.files().values()], "phantoms")
    rows = ["case_id,annotated"] + [f"{p.case_id},{' '.join(map(str, p.annotated))}"
                                    for p in plans if p.pool in ("labeled", "tumor_only")]
    write_text("\n".join(rows) + "\n", out / "manifest.csv")
    meta = {"generator_version": GENERATOR_VERSION, "seed": cfg.seed, "config": to_dict(cfg),
            "orientations": {k: list(v) for k, v in ORIENTATIONS.items()},
            "cases": {p.case_id: infos[p.case_id] for p in plans}}
    write_json(meta, out / "phantoms.json")
    return meta
