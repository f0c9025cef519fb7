"""Tumors (label 14) for the phantoms: inside or attached to liver, kidneys, pancreas or stomach.

:func:`sample_tumors` places tumors from an already rendered anatomy (a centre is drawn among the
host organ's voxels, deep inside or near its surface for exophytic ones); :func:`paint_tumors`
writes them into the label map and the HU image.  Radii are physical millimetres (a few mm to
several cm, capped by the host's size), so a tumor is round in physical space even though the
canonical frame is scaled differently in-plane and along z.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from flareseg.data.phantom_anatomy import Rendered
from flareseg.data.phantom_shapes import Ellipsoid, Grid, random_rotation
from flareseg.labels import TUMOR

#: organs that can host a tumor, and their typical canonical half-size (mm) that caps its radius
TUMOR_HOSTS: tuple[int, ...] = (1, 2, 13, 4, 11)
HOST_SIZE_MM: dict[int, float] = {1: 60.0, 2: 30.0, 13: 30.0, 4: 16.0, 11: 40.0}


@dataclass(frozen=True)
class TumorParams:
    host: int
    shape: Ellipsoid
    radius_mm: float       # mean physical radius
    hu: float
    core_hu: float | None  # necrotic core HU (large tumors only) or None
    exophytic: bool        # centred at the host's surface rather than inside


def sample_tumors(rng: np.random.Generator, rendered: Rendered, grid: Grid, n: int,
                  hosts: Sequence[int],
                  mm_per_unit: Sequence[float], spacing_zyx: Sequence[float],
                  host_hu: dict[int, float]) -> list[TumorParams]:
    """Draw ``n`` tumors in organs ``hosts`` of ``rendered`` (evaluated on ``grid``).

    ``mm_per_unit`` is the physical size (z, y, x) of one canonical millimetre and
    ``spacing_zyx`` the voxel size (mm); tumors whose host is not in the field of view are skipped.
    """
    scale = np.asarray(mm_per_unit, float)
    r_min = max(2.0, 1.5 * min(spacing_zyx[1:]), 0.6 * spacing_zyx[0])
    out: list[TumorParams] = []
    for _ in range(n):
        order = rng.permutation(np.asarray(hosts))
        exo = bool(rng.random() < 0.3)
        center = None
        for host in order:
            center = _pick_center(rng, rendered, grid, int(host), exo)
            if center is not None:
                break
        if center is None:
            continue
        host = int(host)
        r_max = max(r_min, min(25.0, 0.8 * HOST_SIZE_MM[host] * float(scale[1:].min())))
        r = float(np.exp(rng.uniform(np.log(r_min), np.log(r_max))))
        semi = r * rng.uniform(0.75, 1.25, size=3) / scale
        shape = Ellipsoid.sample(rng, center, semi, random_rotation(rng, 90), amp=rng.uniform(0.1, 0.3))
        delta = -rng.uniform(25, 70) if rng.random() < 0.7 else rng.uniform(20, 60)
        core = float(rng.uniform(0, 25)) if (r > 12 and rng.random() < 0.5) else None
        out.append(TumorParams(host, shape, r, float(host_hu[host] + delta), core, exo))
    return out


def _pick_center(rng: np.random.Generator, rendered: Rendered, grid: Grid, host: int,
                 exophytic: bool) -> np.ndarray | None:
    """A random voxel centre (canonical mm, z y x) deep inside / near the surface of ``host``."""
    cands = []
    for bbox, f, _ in rendered.fields.get(host, []):
        own = rendered.label[bbox] == host
        sel = own & ((f > -0.2) & (f < 0) if exophytic else f < -0.3)
        if not sel.any():
            sel = own
        idx = np.flatnonzero(sel)
        if idx.size:
            cands.append((bbox, sel.shape, idx))
    if not cands:
        return None
    bbox, shp, idx = cands[int(rng.integers(len(cands)))]
    k = np.unravel_index(int(idx[rng.integers(idx.size)]), shp)
    return np.array([grid.axes[a][k[a] + bbox[a].start] for a in range(3)], dtype=float)


def paint_tumors(tumors: Sequence[TumorParams], grid: Grid, rendered: Rendered) -> list[dict]:
    """Write tumors into ``rendered.label`` (class 14) and ``rendered.image``; returns their info.

    Tumors that cover no voxel at this resolution are left out of the returned list.
    """
    info = []
    for t in tumors:
        bbox, f = t.shape.evaluate(grid)
        if bbox is None:
            continue
        inside = (f < 0) & rendered.allowed[bbox]
        n = int(inside.sum())
        if n == 0:
            continue
        rendered.label[bbox][inside] = TUMOR
        rendered.image[bbox][inside] = t.hu
        if t.core_hu is not None:
            rendered.image[bbox][inside & (f < -0.5)] = t.core_hu
        info.append({"host": t.host, "radius_mm": round(t.radius_mm, 2), "voxels": n,
                     "hu": round(t.hu, 1), "exophytic": t.exophytic,
                     "necrotic_core": t.core_hu is not None})
    return info
