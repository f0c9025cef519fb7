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

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from flareseg.data.phantom_shapes import (BBox, Carved, Ellipsoid, Grid, SmoothField, TorusArc, Tube,
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

#: ``anatomy: adult`` HU ranges per phase (plain, arterial, portal, delayed), each ``(lo, hi)``; a
#: patient draws uniformly inside them.  From published ranges, not from any one scan:
#: liver and spleen unenhanced 50-65 / 40-55 HU, the spleen about 10 HU below the liver (Kodama et
#: al., AJR 2007;188:1307-12); contrast enhancement of liver, pancreas, vessels and kidneys by phase
#: (Bae, Radiology 2010;256:32-61; renal corticomedullary / nephrographic / excretory phases: Yuh
#: & Cohan, AJR 1999;173:747-55); unenhanced blood 35-50 HU (haematocrit-dependent); normal adrenal
#: 10-35 HU unenhanced; bile, urine and CSF 0-20 HU; fat -120 to -80 HU; muscle 40-60 HU; aerated
#: lung about -900 to -800 HU; L1 trabecular bone 130-280 HU in adults (Pickhardt et al., Ann Intern
#: Med 2013;158:588-95).  Kidneys: cortex here, medulla and pelvis in ``ADULT_TISSUE_HU``.
ADULT_ORGAN_HU: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((50, 65), (60, 85), (100, 130), (80, 105)),
    2: ((28, 40), (150, 220), (140, 190), (110, 150)),
    3: ((40, 55), (100, 150), (110, 135), (90, 115)),
    4: ((30, 50), (100, 140), (80, 115), (60, 90)),
    5: ((35, 50), (250, 400), (140, 200), (100, 140)),
    6: ((35, 50), (70, 120), (130, 180), (100, 140)),
    7: ((10, 35), (50, 80), (50, 80), (40, 65)),
    8: ((10, 35), (50, 80), (50, 80), (40, 65)),
    9: ((0, 20), (0, 20), (0, 20), (0, 20)),
    10: ((35, 50), (55, 80), (60, 90), (55, 80)),
    11: ((35, 50), (60, 100), (70, 100), (55, 85)),
    12: ((35, 50), (60, 100), (70, 100), (55, 85)),
    13: ((28, 40), (150, 220), (140, 190), (110, 150)),
}
ADULT_TISSUE_HU: dict[str, tuple[tuple[float, float], ...]] = {
    "medulla": ((25, 35), (70, 110), (130, 180), (120, 160)),
    "pelvis": ((0, 20), (0, 20), (0, 25), (300, 900)),
    "blood": ((35, 50), (200, 350), (140, 190), (100, 140)),      # heart chambers
    "myocardium": ((40, 55), (90, 130), (90, 120), (70, 100)),
    "muscle": ((40, 60), (45, 65), (50, 70), (50, 70)),
    "urine": ((0, 15), (0, 15), (0, 20), (150, 600)),             # bladder
}


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
    trunk: "Trunk | None" = None         # chest and pelvis (``anatomy: adult``)
    bg_sharpness: float = 1.5            # how sharply the cavity background splits into fat / soft tissue
    renal_fat_mm: float = 0.0            # perirenal fat around the kidneys, renal sinus fat (``adult``)


@dataclass(frozen=True)
class Trunk:
    """What lies above and below the abdomen (canonical mm, vectors (z, y, x)); nothing here is a
    FLARE class.  Levels follow textbook vertebral anatomy (e.g. Gray's Anatomy, 42nd ed.): the
    diaphragm domes just above the liver and spleen with the posterior costophrenic recesses
    reaching about T12-L1, the heart on the central tendon, psoas from T12/L1 down, the aortic
    bifurcation and iliac crests at L4, the bladder in the lesser pelvis."""

    dome: tuple[float, float]            # right, left diaphragm dome height (mm)
    heart: Ellipsoid
    psoas: tuple[Tube, Tube]
    iliac_wings: tuple[Ellipsoid, Ellipsoid]
    iliac_vessels: tuple[Tube, ...]
    bladder: Ellipsoid
    bowel_gas: tuple[Ellipsoid, ...]
    lung_field: SmoothField

    def diaphragm(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Diaphragm height (mm) over the axial plane (broadcast ``y``, ``x``): two domes (right
        over the liver, left over spleen and stomach), the central tendon ~2.5 cm lower, falling
        laterally and posteriorly into the costophrenic recesses."""
        top = np.where(x < 0, self.dome[0], self.dome[1])
        return (top - 0.006 * (np.abs(x) - 65.0) ** 2 - 0.45 * np.maximum(y, 0.0)).astype(np.float32)


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
    # spleen and kidneys at the published adult volumes as rendered (spleen about 215 mL, Prassopoulos
    # et al., Eur Radiol 1997;7:246-8; kidney 134-146 mL, Emamian et al., AJR 1993;160:83-6); adult
    # phantoms then carve the spleen's visceral surface (_visceral_impression)
    o[3] = ell(_p(j(98, 5), j(45), j(60)), (28, 56, 58), rotation_zyx(about_z=-35))
    o[11] = ell(_p(j(50), j(-30), j(58)), (44, 36, 52), rotation_zyx(about_y=25))
    for cls, side, zc in ((2, -1, -35), (13, 1, -25)):
        o[cls] = ell(_p(side * j(62, 5), j(42, 5), j(zc)), (30, 27, 55),
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


def _top(shape) -> float:
    """Highest canonical z (mm) an organ shape reaches (first ellipsoid of a list)."""
    s = shape[0] if isinstance(shape, list) else shape
    return float(s.center[0] + Ellipsoid._half_extent(s.rotation, np.asarray(s.semi))[0])


def _sample_trunk(rng: np.random.Generator, shapes: dict[int, Any]) -> Trunk:
    """Chest and pelvis of one patient, placed against the sampled abdominal organs."""
    dome = (_top(shapes[1]) + rng.uniform(2, 8), max(_top(shapes[3]), _top(shapes[11])) + rng.uniform(2, 8))
    centre_tendon = min(dome) - 0.006 * 65.0 ** 2
    f = rng.uniform(0.9, 1.1)
    heart = Ellipsoid.sample(rng, _p(rng.uniform(5, 25), rng.uniform(-45, -25), centre_tendon + 50 * f),
                             (55 * f, 48 * f, 60 * f), rotation_zyx(about_y=-25, about_x=20) @
                             random_rotation(rng, 8), amp=0.1)
    psoas = tuple(Tube.sample(rng, 0, [(-250, -5, side * 78, 15, 14), (-170, 16, side * 60, 21, 19),
                                       (-90, 26, side * 45, 17, 16), (-15, 32, side * 31, 7, 7)],
                              amp=0.1) for side in (-1, 1))
    crest = VESSELS_END_Z + rng.uniform(-10, 10)     # iliac crests ~ L4, with the bifurcation
    wings = tuple(Ellipsoid.sample(rng, _p(side * rng.uniform(95, 110), rng.uniform(25, 40), crest - 70),
                                   (72, 62, 13), rotation_zyx(about_z=side * 35), amp=0.1)
                  for side in (-1, 1))
    vessels = tuple(Tube.sample(rng, 0, [(VESSELS_END_Z - 140, dy - 5, side * 78, r, r),
                                         (VESSELS_END_Z - 60, dy + 10, side * 45, r, r),
                                         (VESSELS_END_Z + 5, dy + 3, side * 4, r, r)], taper=False)
                    for side in (-1, 1) for dy, r in ((0.0, 6.5), (12.0, 7.5)))     # iliac arteries, veins
    bladder = Ellipsoid.sample(rng, _p(rng.uniform(-10, 10), rng.uniform(-55, -35), rng.uniform(-290, -260)),
                               rng.uniform(30, 55, size=3), random_rotation(rng, 10), amp=0.15)
    gas = tuple(Ellipsoid.sample(rng, _p(rng.uniform(-110, 110), rng.uniform(-100, 20), rng.uniform(-280, -20)),
                                 rng.uniform(4, 14, size=3), random_rotation(rng, 40), amp=0.2)
                for _ in range(int(rng.integers(4, 14))))
    return Trunk((float(dome[0]), float(dome[1])), heart, psoas, wings, vessels, bladder, gas,  # type: ignore[arg-type]
                 SmoothField.sample(rng, (-400, -200, -200), (400, 200, 200), k=9))


def _visceral_impression(spleen: Ellipsoid) -> Carved:
    """The spleen with its concave visceral surface: its diaphragmatic surface is convex against the
    ribs, its visceral surface concave where the stomach, left kidney and colon mould it, so that an
    axial section is a crescent (Gray's Anatomy 42nd ed., spleen; Moore's Clinically Oriented
    Anatomy 8th ed.).  A deterministic cut (no random draw): an ellipsoid on the spleen's thin axis,
    on the side toward the body axis, leaving about 60 % of the central thickness and the poles whole."""
    rot, semi = np.asarray(spleen.rotation), np.asarray(spleen.semi, dtype=float)
    centre = np.asarray(spleen.center, dtype=float)
    inward = np.array([0.0, -centre[1], -centre[2]])          # toward the body axis, in the axial plane
    thin = int(np.argmin(semi))
    axis = rot[:, thin] if rot[:, thin] @ inward > 0 else -rot[:, thin]
    scale = np.full(3, 0.8)
    scale[thin] = 1.0                                         # as deep as the spleen is thick, 80 % as wide
    cutter = Ellipsoid(tuple(centre + 1.25 * semi[thin] * axis), tuple(semi * scale), rot)
    return Carved(spleen, cutter)


def _adult_hu(rng: np.random.Generator, phase: int) -> dict[str, float]:
    """Per-patient HU of ``anatomy: adult`` drawn inside the published ranges of ``phase``."""
    hu = {f"organ{c}": rng.uniform(*v[phase]) for c, v in ADULT_ORGAN_HU.items()}
    hu.update({k: rng.uniform(*v[phase]) for k, v in ADULT_TISSUE_HU.items()})
    hu.update(fat=rng.uniform(-120, -80), bone=rng.uniform(130, 280), cortex=rng.uniform(500, 900),
              lung=rng.uniform(-900, -800), canal=rng.uniform(0, 20), gas=rng.uniform(-1000, -900))
    return {k: float(v) for k, v in hu.items()}


def sample_anatomy(rng: np.random.Generator, adult: bool = False, phase: str | None = None) -> AnatomyParams:
    """Draw one patient: body habitus, organ shapes, contrast phase and HU values.

    ``adult`` (``anatomy: adult``) adds the chest and pelvis (:class:`Trunk`) and draws the HU from
    the published ranges of ``ADULT_ORGAN_HU`` / ``ADULT_TISSUE_HU``; the draws of the simple
    phantom come first and unchanged, so the abdomen's shapes are the same patient either way.
    ``phase`` (one of ``PHASES``) replaces the drawn contrast phase; the phase is still drawn, so
    the same ``rng`` gives the same patient in every phase (only the HU change).
    """
    if phase is not None and phase not in PHASES:
        raise ValueError(f"phase {phase!r}: not one of {', '.join(PHASES)}")
    body_a = BODY_A   # fixed: the caller's scale sets the body width; habitus varies in depth
    body_b = (body_a * rng.uniform(0.66, 0.8), body_a * rng.uniform(0.58, 0.68))
    box = ((-300, -body_b[0], -body_a), (300, body_b[1], body_a))
    drawn = str(rng.choice(PHASES, p=PHASE_P))
    phase = drawn if phase is None else phase
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
    params = AnatomyParams(
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
    if not adult:
        return params
    # adult: visceral fat between bowel loops (loop-sized blobs, sharp fat/soft boundaries; visceral
    # fat is 20-50 % of the cavity's area at L3 in adults), subcutaneous fat 15-35 mm
    # perirenal fat follows visceral adiposity (it is part of the visceral fat): 5-20 mm (posterior
    # perirenal fat thickness in adults, e.g. Lamacchia et al., Nephrol Dial Transplant 2011;26:892-8;
    # Davidiuk et al., Urology 2014;84:1120-5); derived, not drawn, so the random stream and with it
    # every other draw of the patient stay the same
    visceral = float(rng.uniform(-0.5, 1.5))
    organs = tuple((c, _visceral_impression(s) if c == 3 else s) for c, s in params.organs)
    return replace(params, hu={**params.hu, **_adult_hu(rng, pi)}, trunk=_sample_trunk(rng, shapes), organs=organs,
                   fat=float(rng.uniform(0.09, 0.21)), visceral_fat=visceral,
                   bg_field=SmoothField.sample(rng, *box, k=14), bg_sharpness=4.0,
                   renal_fat_mm=5.0 + 7.5 * (visceral + 0.5))


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
    w = 1.0 / (1.0 + np.exp(-(p.bg_sharpness * p.bg_field.evaluate(*grid.axes) - p.visceral_fat)))
    image[cavity] = (h["fat"] + (h["soft"] - h["fat"]) * w)[cavity]
    skeleton = _skeleton(p, grid, image, cavity_r, rho)
    if p.trunk is not None:
        skeleton = skeleton | _pelvic_bones(p, grid, image)
    allowed = cavity & ~skeleton

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
    if p.renal_fat_mm > 0:
        _perirenal_fat(p.renal_fat_mm, h["fat"], grid, label, image, fields, allowed)
    if p.trunk is not None:
        _render_trunk(p.trunk, h, grid, label, image, allowed)
    if p.renal_fat_mm > 0:     # last: the sinus leaves the kidney label, and nothing may paint into it
        _renal_sinus(h, grid, label, image, fields)
    return Rendered(label, image, allowed, fields)


def _pelvic_bones(p: AnatomyParams, grid: Grid, image: np.ndarray) -> np.ndarray:
    """Paint the iliac wings (cortex shell around cancellous bone); returns their mask."""
    mask = np.zeros(grid.shape, dtype=bool)
    for wing in p.trunk.iliac_wings:   # type: ignore[union-attr]
        bbox, f = wing.evaluate(grid)
        if bbox is not None:
            image[bbox][f < 0] = p.hu["cortex"]
            image[bbox][f < -0.45] = p.hu["bone"]
            mask[bbox] |= f < 0
    return mask


def _render_trunk(t: Trunk, h: dict[str, float], grid: Grid, label: np.ndarray, image: np.ndarray,
                  allowed: np.ndarray) -> None:
    """Lungs, heart, psoas, iliac vessels, bladder and bowel gas into ``image`` where no FLARE organ
    is labelled (``label`` is read, never written: none of these is a FLARE class)."""
    free = allowed & (label == 0)
    above = grid.zs[:, None, None] > t.diaphragm(grid.ys[:, None], grid.xs[None, :])[None]
    bbox, f = t.heart.evaluate(grid)
    if bbox is not None:
        sel = free[bbox] & (f < 0.12)
        image[bbox][sel] = h["fat"]                                      # pericardial fat
        image[bbox][sel & (f < 0)] = h["myocardium"]
        image[bbox][sel & (f < -0.35)] = h["blood"]                      # the chambers
        free[bbox] &= ~sel
    mediastinum = (np.abs(grid.xs)[None, :] < 30) & (grid.ys[:, None] < 25)      # (Y, X), stays fat
    lung = free & above & ~mediastinum[None]
    image[lung] = (h["lung"] + 25.0 * t.lung_field.evaluate(*grid.axes))[lung]
    free &= ~lung
    for shape, key in ([(s, "muscle") for s in t.psoas] + [(t.bladder, "urine")]
                       + [(v, "organ5" if i % 2 == 0 else "organ6") for i, v in enumerate(t.iliac_vessels)]
                       + [(g, "gas") for g in t.bowel_gas]):
        bbox, f = shape.evaluate(grid)
        if bbox is not None:
            image[bbox][free[bbox] & (f < 0)] = h[key]


def _renal_sinus(h: dict[str, float], grid: Grid, label: np.ndarray, image: np.ndarray,
                 fields: dict[int, list]) -> None:
    """The renal sinus of each kidney: a fat-filled cavity opening at the hilum, on the kidney's
    medial side, with the renal pelvis (urine) in it.  Its voxels leave the kidney label: a kidney
    label covers the parenchyma, and the sinus fat is the dark notch at the hilum of a real kidney."""
    for cls in (2, 13):
        for _, _, kidney in fields.get(cls, []):
            semi = np.asarray(kidney.semi, dtype=float)                   # (z, y, x) of its own axes
            axis = kidney.rotation[:, 2]                                  # its x axis in (z, y, x)
            medial = axis if axis[2] * kidney.center[2] < 0 else -axis    # toward the midline
            sinus = Ellipsoid(tuple(np.asarray(kidney.center) + 0.55 * semi[2] * medial),
                              tuple(semi * (0.55, 0.45, 0.5)), kidney.rotation)
            bbox, f = sinus.evaluate(grid)
            if bbox is None:
                continue
            own = label[bbox] == cls
            image[bbox][own & (f < 0)] = h["fat"]
            image[bbox][own & (f < -0.6)] = h["pelvis"]
            label[bbox][own & (f < 0)] = 0


def _perirenal_fat(mm: float, fat_hu: float, grid: Grid, label: np.ndarray, image: np.ndarray,
                   fields: dict[int, list], allowed: np.ndarray) -> None:
    """Fat inside Gerota's fascia: a shell ``mm`` thick around each kidney, where no organ is
    labelled (adrenals, liver, spleen, bowel keep their voxels; psoas is painted over it later)."""
    for cls in (2, 13):
        for _, _, s in fields.get(cls, []):
            capsule = replace(s, semi=tuple(float(v) + mm for v in s.semi))
            bbox, f = capsule.evaluate(grid)
            if bbox is not None:
                image[bbox][(f < 0) & (label[bbox] == 0) & allowed[bbox]] = fat_hu


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
