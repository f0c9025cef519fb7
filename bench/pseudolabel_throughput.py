"""Throughput of the stage-2 uncertainty scores (cases/s), ours vs a straightforward numpy version.

Case: (15, 96, 192, 192) float32 softmax probabilities, 1 member (entropy) and 3 members (entropy,
disagreement, inconsistency, overlap, organs and tumor separately).  The reference computes the
same numbers with plain numpy on stacked arrays; both results are checked to agree.

    python -m bench.pseudolabel_throughput [--shape 15 96 192 192] [--repeats 3] [--device cpu] [--threads 1]
"""
from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import torch

from bench._common import machine_line, run_bench
from flareseg.pseudolabel.uncertainty import case_scores

ORG = np.arange(1, 14)


def make_probs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Softmax of noisy logits over one blocky 'organ' layout; the noise differs per seed, so
    members mostly agree and disagree on a fraction of the voxels, like real ensembles."""
    rng = np.random.default_rng(seed)
    C, Z, Y, X = shape
    logits = rng.standard_normal(shape, dtype=np.float32)
    z, y, x = np.meshgrid(np.arange(Z) // 16, np.arange(Y) // 48, np.arange(X) // 48, indexing="ij")
    lab = (z + 3 * y + 5 * x) % C
    np.put_along_axis(logits, lab[None], np.take_along_axis(logits, lab[None], 0) + 3.0, 0)
    logits -= logits.max(0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(0, keepdims=True)
    return logits


def _masked_mean(v: np.ndarray, m: np.ndarray) -> float:
    return float(v[m].mean()) if m.any() else math.nan


def reference(members: list[np.ndarray]) -> dict[str, float]:
    """Plain numpy: stack members, mean/std over members, per-group masks."""
    stack = np.stack(members)                                    # (M, C, Z, Y, X)
    mean = stack.mean(0)
    lab = mean.argmax(0)
    ent = -(mean * np.log(np.clip(mean, 1e-30, None))).sum(0)
    out = {}
    groups = {"organ": ORG, "tumor": np.array([14])}
    for g, cls in groups.items():
        out[f"{g}_entropy"] = _masked_mean(ent, np.isin(lab, cls))
    if len(members) < 2:
        return out
    labels = stack.argmax(1)                                     # (M, Z, Y, X)
    std = stack.std(0)
    dis = (labels != labels[0]).any(0)
    for g, cls in groups.items():
        ing = np.isin(labels, cls)
        anyg = ing.any(0)
        out[f"{g}_disagreement"] = float((dis & anyg).sum() / anyg.sum()) if anyg.any() else math.nan
        num = den = 0.0
        for c in cls:
            u = (labels == c).any(0)
            num += float(std[c][u].sum())
            den += float(u.sum())
        out[f"{g}_inconsistency"] = num / den if den else math.nan
        d = [2 * float(((labels[a] == labels[b]) & ing[a]).sum()) / float(ing[a].sum() + ing[b].sum())
             for a, b in itertools.combinations(range(len(members)), 2) if ing[a].any() or ing[b].any()]
        out[f"{g}_overlap"] = float(np.mean(d)) if d else math.nan
    return out


def timed(fn, repeats: int, device: str) -> float:
    fn()                                                         # warm-up
    ts = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=4, default=(15, 96, 192, 192))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 = same as numpy, which runs these ops single-threaded)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    members_np = [make_probs(tuple(a.shape), s) for s in range(3)]
    members_t = [torch.from_numpy(m).to(a.device) for m in members_np]
    print(machine_line(a.device))
    print(f"shape {tuple(a.shape)} float32, best of {a.repeats}")
    print("data: organ_disagreement of the 3 members = "
          f"{case_scores(members_t)['organ_disagreement']:.3f} (fraction of organ voxels)")
    print(f"{'members':>8} {'ours s/case':>12} {'numpy s/case':>13} {'ours cases/s':>13} "
          f"{'numpy cases/s':>14} {'speed-up':>9}")
    for m in (1, 3):
        ours = case_scores(members_t[:m])
        ref = reference(members_np[:m])
        for k, v in ref.items():
            same = math.isclose(ours[k], v, rel_tol=1e-4, abs_tol=1e-6)
            assert same or (math.isnan(v) and math.isnan(ours[k])), (k, ours[k], v)
        t_ours = timed(lambda: case_scores(members_t[:m]), a.repeats, a.device)
        t_ref = timed(lambda: reference(members_np[:m]), a.repeats, "cpu")
        print(f"{m:>8} {t_ours:>12.3f} {t_ref:>13.3f} {1 / t_ours:>13.2f} {1 / t_ref:>14.2f} "
              f"{t_ref / t_ours:>8.1f}x")


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "pseudolabel_throughput"))
