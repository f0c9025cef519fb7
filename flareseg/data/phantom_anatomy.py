"""Abdominal anatomy of a phantom: body wall, spine, ribs and the 13 FLARE organs, in HU.

:func:`sample_anatomy` draws one patient (positions, sizes, deformations, contrast phase, HU);
:func:`render_anatomy` evaluates it on a :class:`~flareseg.data.phantom_shapes.Grid` whose
coordinates are millimetres of the *canonical frame*: an adult-sized abdomen, origin at the
body centre, x to patient left, y posterior, z superior (DICOM/ITK LPS axes).  The caller maps
physical millimetres to this frame (scaling the body to the field of view).  Organs are painted
in a fixed priority order, so later ones win where shapes overlap; nothing is labelled inside
bone, the spinal canal, paraspinal muscles or outside the abdominal cavity.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flareseg.data.phantom_shapes import (BBox, Ellipsoid, Grid, SmoothField, TorusArc, Tube,
                                          paint, random_rotation, rotation_zyx)

BODY_A = 165.0        # canonical body half-width (x, mm); the caller scales this to the FOV
PHASES = ("plain", "arterial", "portal", "delayed")
PHASE_P = (0.15, 0.25, 0.45, 0.15)

#: mean HU per phase (plain, arterial, portal, delayed); kidneys give the cortex.
ORGAN_HU: dict[int, tuple[float, float, float, float]] = {
    1: (55, 70, 110, 85), 2: (30, 190, 160, 130), 3: (45, 115, 120, 95), 4: (40, 110, 90, 70),
    5: (40, 280, 165, 110), 6: (40, 80, 150, 110), 7: (30, 60, 70, 55), 8: (30, 60, 70, 55),
    9: (10, 10, 10, 10), 10: (35, 60, 70, 60), 11: (40, 90, 80, 60), 12: (30, 60, 70, 55),
    13: (30, 190, 160, 130),
}
MEDULLA_HU = (30, 90, 150, 130)   # kidney inner region per phase
PELVIS_HU = (20, 20, 30, 350)     # renal pelvis (excreted contrast when delayed)

#: Canonical z (mm) where the aorta and IVC end (their bifurcation into the unlabeled iliac
#: vessels).  Below every scan without ``z_margin_mm`` (lowest canonical slice -120), so it only
#: shapes the pelvis that a margin adds: planes there hold nothing FLARE labels.
VESSELS_END_Z = -135.0

#: Painting order: later organs win overlaps.
PAINT_ORDER = (1, 3, 11, 2, 13, 4, 12, 9, 7, 8, 10, 6, 5)


def _p(x: float, y: float, z: float) -> np.ndarray:
    """Canonical point given as (x, y, z) mm -> (z, y, x) vector."""
    return np.array([z, y, x], dtype=float)


@dataclass(frozen=True)
class AnatomyParams:
    """One sampled patient (all lengths canonical mm, vectors (z, y, x))."""

    body_a: float
    body_b: tuple[float, float]          # anterior, posterior half-depth
    fat: float                           # subcutaneous fat thickness (fraction of radius)
    muscle: float                        # muscle wall thickness (fraction of radius)
    wobble: tuple[float, float, float]   # body width variation along z: amplitude, period, phase
    body_field: SmoothField
    bg_field: SmoothField
    visceral_fat: float                  # bias of the fat/soft-tissue background mix
    organs: tuple[tuple[int, Any], ...]  # (class, shape) in painting order
    gas: tuple[Ellipsoid, ...]           # bowel gas pockets
    stomach_gas: bool
    rib_phase: float
    disc_phase: float
    phase: str
    hu: dict[str, float] = field(default_factory=dict)


def _organs(rng: np.random.Generator) -> dict[int, Any]:
    """Organ shapes at their canonical positions with per-patient jitter."""
    def j(v: float, s: float = 8.0) -> float:
        return float(v + rng.uniform(-s, s))

    def sc(*v: float) -> tuple[float, ...]:
        f = rng.uniform(0.85, 1.15)
        return tuple(x * f * rng.uniform(0.93, 1.07) for x in v)

    def ell(c, semi_xyz, rot=None, amp=0.25, rot_jitter=8.0):
        r = random_rotation(rng, rot_jitter) if rot is None else rot @ random_rotation(rng, rot_jitter)
        sx, sy, sz = sc(*semi_xyz)
        return Ellipsoid.sample(rng, c, (sz, sy, sx), r, amp=rng.uniform(0.6, 1.2) * amp)

    o: dict[int, Any] = {}
    # liver: right lobe plus a left lobe reaching across the midline
    o[1] = [ell(_p(j(-70), j(-5), j(55)), (72, 66, 62), amp=0.3),
            ell(_p(j(-5), j(-55, 5), j(75)), (45, 28, 35), rotation_zyx(about_y=-15))]
    o[3] = ell(_p(j(98, 5), j(45), j(60)), (24, 48, 50), rotation_zyx(about_z=-35))
    o[11] = ell(_p(j(50), j(-30), j(58)), (44, 36, 52), rotation_zyx(about_y=25))
    for cls, side, zc in ((2, -1, -35), (13, 1, -25)):
        o[cls] = ell(_p(side * j(62, 5), j(42, 5), j(zc)), (24, 21, 50),
                     rotation_zyx(about_y=side * -15, about_z=side * 30), amp=0.12)
    wob = rng.uniform(-5, 5, size=2)
    o[4] = Tube.sample(rng, 2, [  # pancreas along x: head (right) -> tail (left, posterior, up)
        (-45, j(-5, 4), j(-25, 4), 15, 16), (-10, j(5, 4), -28 + wob[0], 11, 12),
        (25, j(15, 4), -22 + wob[1], 10, 10), (60, j(25, 4), j(5, 4), 9, 9), (85, j(35, 4), 25, 8, 8)],
        amp=rng.uniform(0.15, 0.3))
    o[12] = TorusArc.sample(rng, _p(j(-45, 4), j(-25, 3), j(-5, 4)), rng.uniform(26, 32),
                            rng.uniform(8, 10), rng.uniform(45, 70), amp=rng.uniform(0.1, 0.25))
    o[9] = ell(_p(j(-45), j(-55), j(8)), (14, 15, 30), rotation_zyx(about_x=30), amp=0.1)
    o[7] = ell(_p(j(-40, 4), j(35, 4), j(45, 4)), (6, 12, 14), amp=0.15)
    o[8] = ell(_p(j(36, 4), j(22, 4), j(45, 4)), (6, 12, 14), amp=0.15)
    o[10] = Tube.sample(rng, 0, [(80, -20, 30, 7, 8), (105, -19, 20, 7, 8), (200, -15, 12, 7, 8)],
                        taper=False, amp=0.15)
    o[6] = Tube.sample(rng, 0, [(-300, 5, -20, 10, 12), (0, 6, -22, 10, 13), (110, 10, -28, 11, 13)],
                       taper=True, amp=0.15)
    r = rng.uniform(9.5, 12)
    o[5] = Tube.sample(rng, 0, [(-300, 0, 5, 0.9 * r, 0.9 * r), (300, 5, 8, r, r)], taper=False,
                       amp=0.08)
    return o


def sample_anatomy(rng: np.random.Generator) -> AnatomyParams:
    """Draw one patient: body habitus, organ shapes, contrast phase and HU values."""
    body_a = BODY_A   # fixed: the caller's scale sets the body width; habitus varies in depth
    body_b = (body_a * rng.uniform(0.66, 0.8), body_a * rng.uniform(0.58, 0.68))
    box = ((-300, -body_b[0], -body_a), (300, body_b[1], body_a))
    phase = str(rng.choice(PHASES, p=PHASE_P))
    pi = PHASES.index(phase)
    hu = {f"organ{c}": v[pi] + rng.normal(0, 8) for c, v in ORGAN_HU.items()}
    hu.update(medulla=MEDULLA_HU[pi] + rng.normal(0, 8), pelvis=PELVIS_HU[pi] + rng.normal(0, 15),
              stomach_content=rng.uniform(5, 25), fat=rng.uniform(-115, -85),
              muscle=rng.uniform(40, 60), soft=rng.uniform(20, 45), bone=rng.uniform(180, 280),
              cortex=rng.uniform(500, 800), disc=rng.uniform(70, 110), canal=rng.uniform(5, 25),
              gas=rng.uniform(-950, -750))
    gas = tuple(Ellipsoid.sample(rng, _p(rng.uniform(-90, 90), rng.uniform(-90, -20),
                                         rng.uniform(-140, 0)),
                                 rng.uniform(5, 15, size=3), random_rotation(rng, 40), amp=0.2)
                for _ in range(int(rng.integers(0, 6))))
    shapes = _organs(rng)
    return AnatomyParams(
        body_a=float(body_a), body_b=(float(body_b[0]), float(body_b[1])),
        fat=float(rng.uniform(0.06, 0.15)), muscle=float(rng.uniform(0.05, 0.08)),
        wobble=(float(rng.uniform(0.0, 0.04)), float(rng.uniform(200, 400)),
                float(rng.uniform(0, 2 * np.pi))),
        body_field=SmoothField.sample(rng, *box, k=5),
        bg_field=SmoothField.sample(rng, *box, k=7),
        visceral_fat=float(rng.normal(0.0, 0.7)),
        organs=tuple((c, shapes[c]) for c in PAINT_ORDER),
        gas=gas, stomach_gas=bool(rng.random() < 0.5),
        rib_phase=float(rng.uniform(0, 30)), disc_phase=float(rng.uniform(0, 30)),
        phase=phase, hu={k: float(v) for k, v in hu.items()})


@dataclass
class Rendered:
    """Result of :func:`render_anatomy`: labels, HU image and per-organ implicit functions."""

    label: np.ndarray                      # (Z, Y, X) uint8, classes 0..13
    image: np.ndarray                      # (Z, Y, X) float32 HU, before noise and blur
    allowed: np.ndarray                    # (Z, Y, X) bool, where soft-tissue labels may go
    fields: dict[int, list[tuple[BBox, np.ndarray, Any]]]   # class -> [(bbox, f, shape)]


def _body_radius(p: AnatomyParams, grid: Grid) -> np.ndarray:
    """Normalised, deformed body radius: < 1 inside the skin."""
    z, y, x = grid.coords(tuple(slice(None) for _ in range(3)))  # type: ignore[arg-type]
    amp, period, ph = p.wobble
    a = p.body_a * (1.0 + amp * np.sin(2 * np.pi * z / period + ph))
    b = np.where(y < 0, p.body_b[0], p.body_b[1])
    rho = np.sqrt((x / a) ** 2 + (y / b) ** 2).astype(np.float32)
    rho *= 1.0 + np.float32(0.04) * p.body_field.evaluate(*grid.axes)
    return rho


def _skeleton(p: AnatomyParams, grid: Grid, image: np.ndarray, cavity_r: float,
              rho: np.ndarray) -> np.ndarray:
    """Paint spine, paraspinal muscles and ribs into ``image``; returns the mask they cover."""
    z, y, x = grid.coords(tuple(slice(None) for _ in range(3)))  # type: ignore[arg-type]
    h = p.hu
    vb = (x / 22.0) ** 2 + ((y - 35.0) / 18.0) ** 2                      # vertebral body
    canal = (x / 9.0) ** 2 + ((y - 63.0) / 8.0) ** 2 < 1
    arch = ((x / 20.0) ** 2 + ((y - 63.0) / 17.0) ** 2 < 1) & ~canal
    spinous = (x / 6.0) ** 2 + ((y - 82.0) / 12.0) ** 2 < 1
    para = ((np.abs(x) - 38.0) / 26.0) ** 2 + ((y - 74.0) / 20.0) ** 2 < 1
    disc = (((grid.zs - p.disc_phase) % 30.0) < 6.0)                      # (Z,)
    image[:, para[0]] = h["muscle"]
    image[:, ((vb < 1) & (vb >= 0.7))[0]] = h["cortex"]
    inner = (vb < 0.7)[0]
    image[:, inner] = h["bone"]
    for zi in np.flatnonzero(disc):
        image[zi][inner] = h["disc"]
    image[:, (arch | spinous)[0]] = h["cortex"] * 0.8
    image[:, canal[0]] = h["canal"]
    solid2d = ((vb < 1) | canal | arch | spinous | para)[0]
    ribs = ((rho < cavity_r + 0.01) & (rho > cavity_r - 0.03) & (y > -0.4 * p.body_b[0])
            & (((z - 0.4 * y - p.rib_phase) % 30.0) < 9.0) & (z > -60.0))   # ribs slope down anteriorly
    image[ribs] = h["cortex"] * 0.9
    return ribs | np.broadcast_to(solid2d, image.shape)


def render_anatomy(p: AnatomyParams, grid: Grid) -> Rendered:
    """Evaluate a sampled patient on ``grid`` -> labels (0..13), HU image and organ fields."""
    h = p.hu
    rho = _body_radius(p, grid)
    image = np.full(grid.shape, -1000.0, dtype=np.float32)
    image[rho < 1] = h["fat"]
    image[rho < 1 - p.fat] = h["muscle"]
    cavity_r = 1 - p.fat - p.muscle
    cavity = rho < cavity_r
    w = 1.0 / (1.0 + np.exp(-(1.5 * p.bg_field.evaluate(*grid.axes) - p.visceral_fat)))
    image[cavity] = (h["fat"] + (h["soft"] - h["fat"]) * w)[cavity]
    allowed = cavity & ~_skeleton(p, grid, image, cavity_r, rho)

    label = np.zeros(grid.shape, dtype=np.uint8)
    fields: dict[int, list] = {}
    vessels_allowed = allowed & (grid.zs >= VESSELS_END_Z)[:, None, None]
    for cls, shape in p.organs:
        for s in (shape if isinstance(shape, list) else [shape]):
            bbox, f = paint(label, grid, s, cls, vessels_allowed if cls in (5, 6) else allowed)
            if bbox is not None:
                fields.setdefault(cls, []).append((bbox, f, s))

    lut = np.zeros(14, dtype=np.float32)
    for c in range(1, 14):
        lut[c] = h[f"organ{c}"]
    organ = label > 0
    image[organ] = lut[label[organ]]
    _organ_details(p, grid, label, image, fields)
    for g in p.gas:
        bbox, f = g.evaluate(grid)
        if bbox is not None:
            sel = (f < 0) & allowed[bbox] & (label[bbox] == 0)
            image[bbox][sel] = h["gas"]
    return Rendered(label, image, allowed, fields)


def _organ_details(p: AnatomyParams, grid: Grid, label: np.ndarray, image: np.ndarray,
                   fields: dict[int, list]) -> None:
    """Kidney medulla/pelvis, stomach content and gas cap (inside the already labelled organs)."""
    h = p.hu
    for cls in (2, 13):
        for bbox, f, _ in fields.get(cls, []):
            own = label[bbox] == cls
            image[bbox][own & (f < -0.5)] = h["medulla"]
            image[bbox][own & (f < -0.8)] = h["pelvis"]
    for bbox, f, s in fields.get(11, []):
        own = label[bbox] == 11
        image[bbox][own & (f < -0.3)] = h["stomach_content"]
        if p.stomach_gas:
            y = grid.coords(bbox)[1]
            cap = own & (f < -0.2) & (y < s.center[1] - 0.45 * s.semi[1])
            image[bbox][cap] = h["gas"]
