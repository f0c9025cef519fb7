"""The paper's three claims over several seeds (issue 28): merge-max vs naive loss, CutMix vs none,
uncertainty-selected vs rejected pseudo labels; per arm mean ± sd over the seeds, the paired
difference with a 95 % t-interval, written as one section of ``docs/evidence.md``.

    python -m bench.evidence --work WORK [--scratch DIR] [--seeds 0 1 2] [--claims loss cutmix pseudolabel]
                             [--fine-budget 10x25] [--coarse-budget 10x25] [--cases 16] [--out docs/evidence.md]

``WORK`` is a finished pipeline work dir on phantoms (``make demo``: stages 1-5), read only.
Everything written goes under ``--scratch`` (shadow preprocessed roots: JSON copied, data
symlinked; one results root per arm and seed; ``runs.json``, the finished runs, so a rerun
continues where a killed one stopped).

* **loss**: the fine configuration (stage-1's plans and preprocessed data) trained with
  ``loss: merge_max`` and ``loss: naive`` (unannotated classes = background); metric: organ mean
  DSC of the held-out validation phantoms (full labels), tumor DSC beside it.
* **cutmix**: the coarse configuration (stage-5's data, stage-3's CTO pool) trained with and
  without context-aware CutMix; metric: tumor DSC, organ mean DSC beside it.
* **pseudolabel**: stage-1's fine model scores ``--cases`` fresh phantoms per seed (phantom stream
  ``1000 + seed``, never the pipeline's cases) as stage-2 does and selects with the work dir's
  ``pseudolabel`` settings; metric: true mean organ Dice of the selected vs the rejected pseudo
  labels, tumor Dice of the kept vs the dropped tumors beside it.

A training arm's seed is the trainer's ``seed`` (weights, label-type batch order, augmentation,
CutMix draws: ``tests/test_seeds.py``); both arms of a seed share it (paired).  Training budgets
are ``EPOCHSxITERATIONS``; elastic deformation follows ``--elastic`` (default 0, as the demo).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench._common import add_overwrite_arg, machine_line, nnunet_process, refuse_input_outputs, run_bench, write_out

log = logging.getLogger("bench.evidence")
SECTION = "claims"


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    arms: tuple[str, str]          # (the paper's arm, the one it beats)
    metric: str                    # key of the primary metric in a run's record
    metric_name: str
    side: str                      # key of the secondary metric
    side_name: str


CLAIMS = {
    "loss": Claim("loss", "Merge-max loss vs naive (unannotated = background)", ("merge_max", "naive"),
                  "organ_dsc", "organ mean DSC", "tumor_dsc", "tumor DSC"),
    "cutmix": Claim("cutmix", "Context-aware CutMix vs none", ("cutmix", "no_cutmix"),
                    "tumor_dsc", "tumor DSC", "organ_dsc", "organ mean DSC"),
    "pseudolabel": Claim("pseudolabel", "Uncertainty-selected vs rejected pseudo labels", ("selected", "rejected"),
                         "organ_dice", "true mean organ Dice of the pseudo labels", "tumor_dice",
                         "true tumor Dice (kept vs dropped tumors)"),
}


# ------------------------------------------------------------------------------------ statistics
def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of paired differences (n >= 2)."""
    from scipy.stats import t
    n = len(diffs)
    m = statistics.fmean(diffs)
    if n < 2:
        return m, math.nan, math.nan
    half = float(t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)
    return m, m - half, m + half


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def verdict(low: float, high: float) -> str:
    if math.isnan(low):
        return "too few seeds for an interval"
    if low > 0:
        return "**holds** (interval above 0)"
    if high < 0:
        return "**reversed** (interval below 0)"
    return "**not shown** at this budget (interval contains 0)"


def paired(runs: dict, claim: Claim, seeds: list[int], key: str) -> tuple[dict[str, list[float]], list[float]]:
    """Per arm the values of ``key`` over the seeds where both arms have one; their differences."""
    a, b = claim.arms
    both = [s for s in seeds if runs.get(run_id(claim.name, a, s), {}).get(key) is not None
            and runs.get(run_id(claim.name, b, s), {}).get(key) is not None]
    vals = {arm: [runs[run_id(claim.name, arm, s)][key] for s in both] for arm in claim.arms}
    return vals, [x - y for x, y in zip(vals[a], vals[b])]


def claim_table(runs: dict, claim: Claim, seeds: list[int]) -> str:
    a, b = claim.arms
    lines = [f"| arm | {claim.metric_name}: mean ± sd | per seed | {claim.side_name}: mean ± sd | per seed |",
             "|---|---:|---|---:|---|"]
    vals, diffs = paired(runs, claim, seeds, claim.metric)
    svals, sdiffs = paired(runs, claim, seeds, claim.side)
    for arm in claim.arms:
        per = lambda v: ", ".join(f"{x:.3f}" for x in v) or "–"  # noqa: E731
        lines.append(f"| {arm} | {mean_sd(vals[arm])} | {per(vals[arm])} | {mean_sd(svals[arm])} | {per(svals[arm])} |")
    out = "\n".join(lines)
    for name, d in ((claim.metric_name, diffs), (claim.side_name, sdiffs)):
        if not d:
            out += f"\n\n{name}, {a} − {b}: no seed with both arms measured."
            continue
        m, lo, hi = t_interval(d)
        out += (f"\n\n{name}, paired difference {a} − {b} over {len(d)} seeds: **{m:+.3f}**, 95 % t-interval "
                f"[{lo:+.3f}, {hi:+.3f}] — {verdict(lo, hi) if name == claim.metric_name else 'secondary'}")
    return out


# ------------------------------------------------------------------------------------------- runs
def run_id(claim: str, arm: str, seed: int) -> str:
    return f"{claim}/{arm}/s{seed}"


def cache_key(key: str, setting: str) -> str:
    """``runs.json`` key of a run: its id and the setting it ran with (budget or case count), so
    a rerun with other settings never reuses a run of the old ones."""
    return f"{key}@{setting}"


def budget(text: str) -> tuple[int, int]:
    e, _, i = text.partition("x")
    return int(e), int(i)


def arm_config(base, epochs: int, iters: int, seed: int, elastic: float, **changes):
    """A training arm's ``TrainConfig``: ``base`` at the evidence budget with ``seed`` as the
    trainer's seed (it seeds weights, batch order, augmentation and CutMix), on the CPU in this
    process, elastic deformation with probability ``elastic``."""
    from flareseg.config import ElasticConfig
    return replace(base, epochs=epochs, iterations_per_epoch=iters, val_iterations=2, seed=seed,
                   num_workers=0, device="cpu", save_every=epochs, fold=0,
                   elastic=replace(ElasticConfig(), probability=elastic), **changes)


def train_and_score(dataset: str, configuration: str, tc, scratch: Path, tag: str, val_images: Path,
                    val_labels: Path, eval_cfg, extra: dict | None = None) -> dict:
    """Train ``configuration`` with ``tc`` into ``scratch/results_<tag>`` (a finished one is
    reused), predict the validation images, score them; organ/tumor DSC and seconds."""
    from bench.cutmix import export_paths
    from bench.loss_ablation import predict_folder
    from flareseg.evaluation.evaluate import evaluate_folders
    from flareseg.nnunet.training import model_folder, train
    paths = export_paths(scratch, scratch / f"results_{tag}")
    t0 = time.perf_counter()
    summary = train(dataset, configuration, tc, paths.preprocessed, paths.results, extra=extra)
    t_train = time.perf_counter() - t0
    pred = scratch / f"pred_{tag}"
    predict_folder(model_folder(paths.results, dataset, configuration), val_images, pred, "cpu")
    res = evaluate_folders(pred, val_labels, eval_cfg, out_dir=scratch / f"eval_{tag}", overwrite=True)
    return {"organ_dsc": res.organ[0], "tumor_dsc": res.tumor[0], "train_s": round(t_train, 1),
            "final_train_loss": summary["final_train_loss"]}


class Evidence:
    """The inputs of the three claims, read from a finished work dir, and the runs done so far."""

    def __init__(self, args):
        from bench.cutmix import WorkDir, load_resolved, shadow_preprocessed
        from flareseg.io import read_json
        self.args = args
        self.scratch = args.scratch.resolve()
        self.wd = WorkDir(args.work)                      # coarse data, CTO pool, validation set
        s1 = self.wd.work / "stage-1-fine"
        self.fine_cfg = load_resolved(s1 / "config.resolved.json")
        self.fine_model = self.wd.resolve(read_json(s1 / "manifest.json")["result"]["model_dir"])
        pres = sorted(p for p in (s1 / "nnUNet_preprocessed").glob("Dataset*") if p.is_dir())
        if len(pres) != 1:
            raise SystemExit(f"{s1 / 'nnUNet_preprocessed'}: expected one fine dataset, found {len(pres)}")
        self.fine_dataset = pres[0].name
        # own shadow roots per process (the plans copy carries the arm's settings while it trains)
        proc = "-s" + "-".join(map(str, args.seeds))
        self.shadow = {"loss": self.scratch / f"loss{proc}", "cutmix": self.scratch / f"cutmix{proc}"}
        for claim, src in (("loss", pres[0]), ("cutmix", self.wd.pre_dataset)):
            if claim in args.claims:
                shadow_preprocessed(src, self.shadow[claim] / "nnUNet_preprocessed")
        # one file per process (claims may run as parallel processes on one scratch); read all
        self.runs_file = self.scratch / (f"runs-{'-'.join(sorted(args.claims))}"
                                         f"-s{'-'.join(map(str, args.seeds))}.json")
        self.cache: dict = json.loads(self.runs_file.read_text()) if self.runs_file.exists() else {}
        self.settings = {"loss": f"fine {args.fine_budget}", "cutmix": f"coarse {args.coarse_budget}",
                         "pseudolabel": f"{args.cases} cases"}
        if args.elastic:
            self.settings = {k: v + (f" elastic {args.elastic}" if k != "pseudolabel" else "")
                             for k, v in self.settings.items()}

    def all_runs(self) -> dict:
        """Every finished run in the scratch folder (all processes' files), by cache key."""
        out: dict = {}
        for f in sorted(self.scratch.glob("runs-*.json")):
            out.update(json.loads(f.read_text()))
        return out | self.cache

    @property
    def runs(self) -> dict:
        """Finished runs of the current settings, by :func:`run_id`."""
        out = {}
        for key, value in self.all_runs().items():
            rid, _, setting = key.partition("@")
            if setting == self.settings.get(rid.split("/")[0]):
                out[rid] = value
        return out

    def wall_minutes(self) -> float:
        """Minutes from the first run's start to the last run's end (the current settings' runs)."""
        rs = [r for r in self.runs.values() if "finished" in r]
        if not rs:
            return 0.0
        return (max(r["finished"] for r in rs) - min(r["started"] for r in rs)) / 60

    def record(self, key: str, value: dict, started: float) -> None:
        from flareseg.io import write_text
        value = value | {"started": started, "finished": time.time()}
        self.cache[cache_key(key, self.settings[key.split("/")[0]])] = value
        write_text(json.dumps(self.cache, indent=1), self.runs_file)

    def loss(self, seed: int) -> None:
        e, i = budget(self.args.fine_budget)
        for arm in CLAIMS["loss"].arms:
            key = run_id("loss", arm, seed)
            if key in self.runs:
                continue
            tc = arm_config(self.fine_cfg.train_fine, e, i, seed, self.args.elastic, loss=arm)
            log.info("%s: fine, %d x %d iterations", key, e, i)
            t0 = time.time()
            self.record(key, train_and_score(self.fine_dataset, "fine", tc, self.shadow["loss"],
                                             f"{arm}_e{e}x{i}_s{seed}", self.wd.val_images, self.wd.val_labels,
                                             self.wd.cfg.evaluation), t0)

    def cutmix(self, seed: int) -> None:
        e, i = budget(self.args.coarse_budget)
        for arm in CLAIMS["cutmix"].arms:
            key = run_id("cutmix", arm, seed)
            if key in self.runs:
                continue
            tc = arm_config(self.wd.cfg.train_coarse, e, i, seed, self.args.elastic)
            log.info("%s: coarse, %d x %d iterations", key, e, i)
            t0 = time.time()
            self.record(key, train_and_score(self.wd.dataset_name, "coarse", tc, self.shadow["cutmix"],
                                             f"{arm}_e{e}x{i}_s{seed}", self.wd.val_images, self.wd.val_labels,
                                             self.wd.cfg.evaluation,
                                             extra=self.wd.cutmix_extra() if arm == "cutmix" else None), t0)

    def pseudolabel(self, seed: int) -> None:
        from bench.pseudolabel_ranking import score_cases
        from flareseg.pseudolabel.selection import select
        if run_id("pseudolabel", "selected", seed) in self.runs:
            return
        cfg = replace(self.fine_cfg, inference=replace(self.fine_cfg.inference, device="cpu"))
        started = time.time()
        t0 = time.perf_counter()
        rows = score_cases(self.fine_model, cfg, self.args.cases, 1000 + seed, tta=False)
        sel = {s.case_id: s for s in select({k: v[0] for k, v in rows.items()}, cfg.pseudolabel)}
        secs = round(time.perf_counter() - t0, 1)
        organ = {True: [], False: []}
        tumor = {True: [], False: []}
        for cid, (_, organ_dice, tumor_dice) in rows.items():
            organ[sel[cid].selected].append(organ_dice)
            if tumor_dice is not None and sel[cid].selected and sel[cid].tumor_score is not None:
                tumor[sel[cid].keep_tumor].append(tumor_dice)
        for arm, flag in (("selected", True), ("rejected", False)):
            self.record(run_id("pseudolabel", arm, seed), {
                "organ_dice": statistics.fmean(organ[flag]) if organ[flag] else None,
                "tumor_dice": statistics.fmean(tumor[flag]) if tumor[flag] else None,
                "cases": len(organ[flag]), "tumor_cases": len(tumor[flag]), "seconds": secs}, started)


# ----------------------------------------------------------------------------------------- report
def lscpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "lscpu not available"
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket")
    return "; ".join(" ".join(line.split()) for line in out.splitlines() if line.split(":")[0].strip() in keep)


def run_minutes(runs: dict, claim: str) -> str:
    """The range of minutes the runs of ``claim`` took (start to end of each record)."""
    m = [(r["finished"] - r["started"]) / 60 for k, r in runs.items() if k.startswith(claim + "/") and "finished" in r]
    return f"{min(m):.1f}–{max(m):.1f} min per run" if m else "no runs yet"


def report(ev: Evidence, seeds: list[int], claims: list[str], command: str) -> str:
    a = ev.args
    fe, fi = budget(a.fine_budget)
    ce, ci = budget(a.coarse_budget)
    parts = [
        "## The paper's three claims over seeds",
        "",
        f"Command (repository root): `{command}`",
        "",
        f"CPU (lscpu): {lscpu_line()}. {machine_line('cpu').replace('machine: ', 'Run: ', 1)}, nice 10, "
        f"the machine shared with other jobs. Wall time from the first "
        f"run's start to the last run's end: {ev.wall_minutes():.0f} min. {a.note}".rstrip(),
        "",
        f"Data: the finished demo work dir `{ev.wd.work}` (`configs/demo.yaml` phantoms; "
        f"{len(list(ev.wd.val_images.glob('*_0000.nii.gz')))} held-out validation phantoms with full labels "
        f"for the training claims). Seeds {seeds}: a seed is the trainer's `seed` (weights, label-type "
        f"batch order, augmentation, CutMix draws; `tests/test_seeds.py`), both arms of a seed share it, "
        f"so the differences are paired. Budgets: fine {fe} × {fi} = {fe * fi} iterations, coarse "
        f"{ce} × {ci} = {ce * ci} iterations (the demo trains 3000 / 2500), AdamW as the demo, elastic "
        f"deformation p = {a.elastic}. 95 % intervals: Student t over the seeds' paired differences "
        f"(n − 1 degrees of freedom). A claim \"holds\" here when its interval lies above 0.",
    ]
    for name in claims:
        c = CLAIMS[name]
        parts += ["", f"### {c.title}", "", claim_table(ev.runs, c, seeds)]
        notes = {"loss": "Fine configuration, validation phantoms scored with the FLARE rules.",
                 "cutmix": "Coarse configuration with the work dir's CTO pool and `cutmix` settings.",
                 "pseudolabel": f"Stage-1's fine model `{ev.fine_model.name}` (the demo's, 3000 iterations) scores "
                                f"{a.cases} fresh phantoms per seed (stream 1000 + seed) as stage-2 does; "
                                f"selection with the work dir's `pseudolabel` settings (k_organ "
                                f"{ev.fine_cfg.pseudolabel.k_organ}, k_tumor {ev.fine_cfg.pseudolabel.k_tumor}); "
                                f"the seed changes the cases, not the model."}
        parts += ["", f"{notes[name]} Run time: {run_minutes(ev.runs, name)} (each arm and seed)."]
    return "\n".join(parts) + "\n"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- evidence:{name} begin -->", f"<!-- evidence:{name} end -->"


def holds_section(path: Path | None, name: str) -> bool:
    """True when ``path`` is a file holding section ``name``'s markers: a document this bench
    already wrote its section into (docs/evidence.md), which it may edit again although people
    edit the rest of it (only the section between the markers changes)."""
    try:
        data = path.read_bytes() if path is not None and path.is_file() else b""
    except OSError:
        return False
    return all(m.encode() in data for m in _markers(name))


def write_section(path: Path, name: str, text: str, overwrite: bool = False) -> None:
    """Replace section ``name`` (between ``<!-- evidence:name -->`` markers) of ``path``, or append
    it; the rest of the file (other sections) stays as it is.  Atomic, through the benches' one
    writer (:func:`bench._common.write_out`): a file that holds the section, that a bench wrote,
    or (``overwrite``) any text file is edited; another existing file is refused (exit 2)."""
    begin, end = _markers(name)
    old = path.read_text() if path.exists() else "# Evidence\n"   # main checked it first
    block = f"{begin}\n{text.rstrip()}\n{end}"
    holds = begin in old and end in old
    if holds:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    write_out(new, path, overwrite=overwrite or holds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("work-demo"), help="finished pipeline work dir (read only)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/flareseg-evidence"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--claims", nargs="+", default=list(CLAIMS), choices=list(CLAIMS))
    ap.add_argument("--fine-budget", default="10x25", help="EPOCHSxITERATIONS of each loss arm")
    ap.add_argument("--coarse-budget", default="10x25", help="EPOCHSxITERATIONS of each CutMix arm")
    ap.add_argument("--cases", type=int, default=16, help="phantoms per seed for the pseudo-label claim")
    ap.add_argument("--elastic", type=float, default=0.0, help="elastic deformation probability (demo: 0)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write the section into")
    ap.add_argument("--note", default="", help="a sentence added to the report's run line")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write the report from the runs recorded in --scratch")
    add_overwrite_arg(ap)
    args = ap.parse_args(argv)
    # the work dir is read only; the recorded runs in --scratch are what --report-only reads
    refuse_input_outputs({"--out": args.out}, sorted(args.scratch.glob("runs-*.json")), folders=[args.work],
                         overwrite=args.overwrite or holds_section(args.out, SECTION))
    # everything else goes under --scratch (trained arms, predictions, evaluations): not into the work dir
    refuse_input_outputs({"--scratch": args.scratch / "runs.json"}, folders=[args.work])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--note" in argv:                  # the note is printed as text, not inside the command
        i = argv.index("--note")
        argv = argv[:i] + argv[i + 2:]
    command = "python -m bench.evidence " + " ".join(shlex.quote(x) for x in argv)
    nnunet_process("cpu", workers=0, threads=args.threads)
    ev = Evidence(args)
    order = [c for c in CLAIMS if c in args.claims]                      # the report's order
    # claim-major, the cheap claim first: a run cut short has every seed of the first claims
    for claim in [] if args.report_only else sorted(order, key=lambda c: c != "pseudolabel"):
        for seed in args.seeds:
            getattr(ev, claim)(seed)
            torch.set_num_threads(args.threads)   # train() sets the thread count per process
            if args.out:
                write_section(args.out, SECTION, report(ev, args.seeds, list(CLAIMS), command), args.overwrite)
    text = report(ev, args.seeds, list(CLAIMS), command)
    print(text)
    if args.out:
        write_section(args.out, SECTION, text, args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "evidence"))
