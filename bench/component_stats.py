"""Benchmark: per-component sizes and boxes, ``cc3d.statistics`` vs the hand-written paths of
:mod:`flareseg.cleaning.components` (issue 19).

On 512x512x100 label maps with a few components (two organs + six tumors; a crop filled mostly by
one organ; six tumors alone) the three ways (``find_objects`` + ``bincount``, ``cc3d.statistics``,
the foreground-voxel-list path ``_stats_sparse``) are checked to give identical sizes, boxes and
classes, and timed interleaved (median of ``--repeats``).

    python -m bench.component_stats [--repeats 7]
"""
from __future__ import annotations

import argparse

import cc3d
import fastremap
import numpy as np
from scipy import ndimage

from bench._common import interleaved, machine_line, run_bench
from flareseg.anatomy import bbox_of
from flareseg.cleaning import components as C


def find_objects_stats(ids: np.ndarray, sub: np.ndarray, n: int):
    """The previous dense path: ``ndimage.find_objects`` + ``bincount`` + component classes."""
    boxes = ndimage.find_objects(ids)
    sizes = np.bincount(ids.ravel(), minlength=n + 1)[1:]
    cmap = fastremap.component_map(ids, sub)
    return boxes, sizes, np.array([cmap[i] for i in range(1, n + 1)])


def scene(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros((100, 512, 512), np.uint8)
    z, y, x = np.ogrid[:100, :512, :512]
    if kind == "organs+tumors":
        lab[((z - 50) / 40) ** 2 + ((y - 250) / 120) ** 2 + ((x - 180) / 110) ** 2 < 1] = 1
        lab[((z - 50) / 25) ** 2 + ((y - 260) / 40) ** 2 + ((x - 380) / 35) ** 2 < 1] = 3
    elif kind == "dense":
        lab[((z - 50) / 52) ** 2 + ((y - 256) / 270) ** 2 + ((x - 256) / 270) ** 2 < 1] = 1
        lab[((z - 50) / 20) ** 2 + ((y - 300) / 40) ** 2 + ((x - 380) / 35) ** 2 < 1] = 3
    for _ in range(6):
        c = rng.integers([10, 50, 50], [90, 460, 460])
        r = rng.integers(2, 8)
        lab[((z - c[0]) / r) ** 2 + ((y - c[1]) / r) ** 2 + ((x - c[2]) / r) ** 2 < 1] = 14
    return lab


def same(a, b) -> bool:
    return ([tuple(s) for s in a[0]] == [tuple(s) for s in b[0]] and np.array_equal(a[1], b[1])
            and np.array_equal(a[2], b[2]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    print(machine_line())
    print("| map | crop | foreground | components | find_objects+bincount (ms) | cc3d.statistics (ms) "
          "| voxel list (ms) | identical |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("organs+tumors", "dense", "tumors only"):
        lab = scene(kind)
        sub = np.ascontiguousarray(lab[bbox_of(lab > 0)])
        ids, n = cc3d.connected_components(sub, connectivity=26, return_N=True)
        ways = {"find_objects": lambda: find_objects_stats(ids, sub, n),
                "cc3d": lambda: C._stats_dense(ids, sub, n),
                "sparse": lambda: C._stats_sparse(ids, sub)}
        res = {k: f() for k, f in ways.items()}
        ok = same(res["find_objects"], res["cc3d"]) and same(res["cc3d"], res["sparse"])
        t = interleaved(ways, args.repeats)
        print(f"| {kind} | {'×'.join(map(str, sub.shape))} | {np.count_nonzero(sub) / sub.size:.3f} | {n} | "
              f"{t['find_objects'] * 1e3:.0f} | {t['cc3d'] * 1e3:.0f} | {t['sparse'] * 1e3:.0f} | "
              f"{'yes' if ok else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_bench(main, "component_stats"))
