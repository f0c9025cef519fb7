"""One synthetic abdominal CT phantom in memory: geometry, orientation, anatomy, tumors, noise.

The anatomy is built on a grid that is ascending in patient LPS coordinates (x to the patient's
left, y posterior, z superior), then the array is flipped and direction/origin are set for the
case's orientation, so every voxel keeps its physical position: organ positions agree in
physical space whatever the stored direction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from flareseg.config import PhantomConfig
from flareseg.data.phantom_anatomy import BODY_A, render_anatomy, sample_anatomy
from flareseg.data.phantom_shapes import Grid
from flareseg.data.phantom_tumors import TUMOR_HOSTS, paint_tumors, sample_tumors
from flareseg.io import Geometry

#: orientation name -> direction signs of the (x, y, z) axes (diagonal direction matrix)
ORIENTATIONS: dict[str, tuple[int, int, int]] = {
    "identity": (1, 1, 1), "flip_xy": (-1, -1, 1), "flip_z": (1, 1, -1)}
CANONICAL_Z = (-105.0, 120.0)   # canonical z range (mm) a scan covers, before jitter
CALIBRATION_HU = 12.0            # adult phantoms: per-scan CT-number offset, uniform in +-this (finish_ct)


@dataclass(frozen=True)
class CaseGeometry:
    """Sampled grid of one case; sizes/spacings/origin in SimpleITK (x, y, z) order, mm."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]     # of the LPS-ascending (identity-direction) array
    orientation: str
    body_center: tuple[float, float]       # physical x, y of the body centre (mm)
    mm_per_unit_xy: float                  # physical mm per canonical mm, in-plane
    mm_per_unit_z: float                   # physical mm per canonical mm, along z
    z_lo: float                            # canonical z of the first slice
    fill: float                            # body width / field-of-view width (approx.)

    def canonical_grid(self) -> Grid:
        """Canonical-frame coordinates (mm) of the LPS-ascending array's voxel centres."""
        nx, ny, nz = self.size
        sx, sy, sz = self.spacing
        xs = (self.origin[0] + np.arange(nx) * sx - self.body_center[0]) / self.mm_per_unit_xy
        ys = (self.origin[1] + np.arange(ny) * sy - self.body_center[1]) / self.mm_per_unit_xy
        zs = self.z_lo + np.arange(nz) * sz / self.mm_per_unit_z
        return Grid(zs.astype(np.float32), ys.astype(np.float32), xs.astype(np.float32))

    def stored(self) -> Geometry:
        """Geometry of the stored (possibly flipped) array: same physical voxel positions."""
        signs = ORIENTATIONS[self.orientation]
        origin = tuple(float(o + (n - 1) * s) if sg < 0 else float(o)
                       for o, n, s, sg in zip(self.origin, self.size, self.spacing, signs))
        direction = (float(signs[0]), 0.0, 0.0, 0.0, float(signs[1]), 0.0, 0.0, 0.0, float(signs[2]))
        return Geometry(tuple(self.size), tuple(self.spacing), origin, direction)

    def to_stored(self, arr: np.ndarray) -> np.ndarray:
        """Flip an LPS-ascending ``(Z, Y, X)`` array into the stored order of this orientation."""
        sx, sy, sz = ORIENTATIONS[self.orientation]
        axes = tuple(a for a, s in ((0, sz), (1, sy), (2, sx)) if s < 0)
        return np.ascontiguousarray(np.flip(arr, axes) if axes else arr)


def sample_geometry(rng: np.random.Generator, cfg: PhantomConfig,
                    orientation: str | None = None) -> CaseGeometry:
    """Draw size, spacing, extent, origin and orientation within ``cfg``'s ranges."""
    n = int(rng.integers(cfg.size_xy[0], cfg.size_xy[1] + 1))
    sxy = round(float(rng.uniform(*cfg.inplane_spacing)), 4)
    sz = round(float(rng.uniform(*cfg.slice_spacing)), 3)
    nz = max(8, int(round(float(rng.uniform(*cfg.extent_z_mm)) / sz)))
    drawn = str(rng.choice(list(ORIENTATIONS), p=[0.5, 0.3, 0.2]))  # always drawn: same stream
    if orientation is None:
        orientation = drawn
    elif orientation not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r} (valid: {', '.join(ORIENTATIONS)})")
    fov = n * sxy
    fill = float(rng.uniform(0.80, 0.88))
    origin = (round(float(rng.uniform(-30, 30)) - (n - 1) * sxy / 2, 3),
              round(float(rng.uniform(-30, 30)) - (n - 1) * sxy / 2, 3),
              round(float(rng.uniform(-400, 0)), 3))
    shift = rng.uniform(-0.03, 0.03, size=2) * fov
    center = (origin[0] + (n - 1) * sxy / 2 + shift[0], origin[1] + (n - 1) * sxy / 2 + shift[1])
    z_lo = CANONICAL_Z[0] + rng.uniform(-15, 15)
    z_hi = CANONICAL_Z[1] + rng.uniform(-15, 15)
    mm_per_unit_z = nz * sz / (z_hi - z_lo)
    if cfg.anatomy == "adult":
        # the canonical frame is adult-sized: keep it (patient scale 0.9-1.1, the same in z), centre
        # the scan on the abdomen (jittered by the two draws above) and let the body fill what it fills
        scale = float(rng.uniform(0.9, 1.1))
        z_mid = sum(CANONICAL_Z) / 2 + (z_lo - CANONICAL_Z[0]) + (z_hi - CANONICAL_Z[1])
        z_lo, mm_per_unit_z = z_mid - nz * sz / 2 / scale, scale
        fill = 2 * BODY_A * scale / fov
    # z_margin_mm: slices of body without abdominal organs at each end (no rng draw, so the
    # abdomen is the same patient at the same physical position as without the margin)
    extra = int(round(cfg.z_margin_mm / sz))
    origin = (*origin[:2], round(origin[2] - extra * sz, 3))
    return CaseGeometry((n, n, nz + 2 * extra), (sxy, sxy, sz), origin, orientation,
                        (float(center[0]), float(center[1])),
                        mm_per_unit_z if cfg.anatomy == "adult" else fill * fov / 2 / BODY_A,
                        mm_per_unit_z, float(z_lo - extra * sz / mm_per_unit_z), fill)


def finish_image(rng: np.random.Generator, image: np.ndarray,
                 noise_hu: tuple[float, float] = (20.0, 50.0),
                 blur_vox: Sequence[float] = (0.35, 0.6, 0.6)) -> np.ndarray:
    """Add Gaussian noise (SD drawn in ``noise_hu`` before blur), blur slightly -> int16 HU."""
    sd = float(rng.uniform(*noise_hu))
    out = image + np.float32(sd) * rng.standard_normal(image.shape, dtype=np.float32)
    ndimage.gaussian_filter(out, sigma=tuple(blur_vox), output=out, mode="nearest")
    np.clip(out, -1024, 3071, out=out)
    return np.rint(out).astype(np.int16)


def finish_ct(rng: np.random.Generator, image: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """A CT's image formation on the rendered scene (``(Z, Y, X)`` HU sampled at voxel centres) -> int16.

    Partial volume: a voxel integrates the scene over its footprint (a box, sigma = size / sqrt(12))
    seen through the scanner's resolution: in-plane point-spread function of a standard soft-tissue
    kernel, FWHM 0.8-1.2 mm; along z the slice sensitivity profile, FWHM about the slice thickness.
    Noise: quantum noise correlated in-plane by the reconstruction kernel (filtered white noise),
    SD 6-16 HU at 5 mm slices, growing as 1/sqrt(thickness) (noise in the liver of routine
    abdominal CT is about 10-20 HU; e.g. AAPM report 96, 2008; ACR CT accreditation noise limits).
    Calibration: one offset of -12 to +12 HU for the whole scan: the same tissue reads up to 10-20 HU
    apart on different scanners and tube voltages (Birnbaum et al., Radiology 2007;242:109-19), so
    the published organ ranges are means that any one scanner shifts.  Drawn last, so the noise and
    everything drawn before it are the same with or without it.
    """
    sz, sy, sx = (float(v) for v in spacing_zyx)
    psf = float(rng.uniform(0.8, 1.2)) / 2.355
    sigma = (np.hypot(sz / np.sqrt(12), sz / 2.355) / sz,
             np.hypot(sy / np.sqrt(12), psf) / sy, np.hypot(sx / np.sqrt(12), psf) / sx)
    out = ndimage.gaussian_filter(image.astype(np.float32, copy=False), sigma=sigma, mode="nearest")
    sd = float(rng.uniform(6.0, 16.0)) * np.sqrt(5.0 / max(sz, 0.5))
    corr = float(rng.uniform(0.5, 0.9)) / max(min(sy, sx), 1e-3)      # kernel correlation length, voxels
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    ndimage.gaussian_filter(noise, sigma=(0.0, corr, corr), output=noise, mode="wrap")
    noise *= np.float32(sd / max(float(noise.std()), 1e-6))
    out += noise
    out += np.float32(rng.uniform(-CALIBRATION_HU, CALIBRATION_HU))
    np.clip(out, -1024, 3071, out=out)
    return np.rint(out).astype(np.int16)


def generate_case(rng: np.random.Generator, cfg: PhantomConfig | None = None, *,
                  tumor_hosts: Sequence[int] = TUMOR_HOSTS, n_tumors: int | None = None,
                  orientation: str | None = None,
                  phase: str | None = None) -> tuple[np.ndarray, np.ndarray, Geometry, dict[str, Any]]:
    """Generate one phantom.

    Returns ``(image, label, geometry, info)``: ``image`` ``(Z, Y, X)`` int16 HU, ``label``
    ``(Z, Y, X)`` uint8 with all 14 classes (full ground truth), the stored
    :class:`~flareseg.io.Geometry`, and a JSON-able ``info`` dict (spacing, size, direction,
    orientation, contrast phase, tumors).  ``n_tumors=None`` draws 0-3 tumors; ``tumor_hosts``
    restricts which organs carry them; ``phase`` fixes the contrast phase (the same patient in
    another phase, see :func:`~flareseg.data.phantom_anatomy.sample_anatomy`).  The result depends
    only on ``rng``'s state and the arguments.
    """
    cfg = cfg or PhantomConfig()
    geo = sample_geometry(rng, cfg, orientation)
    grid = geo.canonical_grid()
    adult = cfg.anatomy == "adult"
    anatomy = sample_anatomy(rng, adult=adult, phase=phase)
    rendered = render_anatomy(anatomy, grid)
    n = int(rng.integers(0, 4)) if n_tumors is None else int(n_tumors)
    host_hu = {c: anatomy.hu[f"organ{c}"] for c in TUMOR_HOSTS}
    mm_per_unit = (geo.mm_per_unit_z, geo.mm_per_unit_xy, geo.mm_per_unit_xy)
    tumors = sample_tumors(rng, rendered, grid, n, tumor_hosts, mm_per_unit,
                           geo.spacing[::-1], host_hu)
    tumor_info = paint_tumors(tumors, grid, rendered)
    image = finish_ct(rng, rendered.image, geo.spacing[::-1]) if adult else finish_image(rng, rendered.image)
    stored = geo.stored()
    info = {"spacing": list(stored.spacing), "size": list(stored.size),
            "origin": list(stored.origin), "direction": list(stored.direction),
            "orientation": geo.orientation, "phase": anatomy.phase,
            "body_fill": round(geo.fill, 3),
            "mm_per_unit": [round(geo.mm_per_unit_xy, 4), round(geo.mm_per_unit_z, 4)],
            "tumors": len(tumor_info), "tumor_details": tumor_info}
    return geo.to_stored(image), geo.to_stored(rendered.label), stored, info
