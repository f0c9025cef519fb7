"""Implicit smooth shapes for the phantoms, evaluated on an axis-aligned grid.

A shape is a frozen dataclass with ``evaluate(grid) -> (bbox, f)``: ``bbox`` the slices of the
grid it can touch and ``f`` a float32 array over that box, negative inside.  ``f`` is a
normalised implicit function (``-1`` at the core, ``0`` on the surface) plus a low-frequency
random field that deforms the surface.  Coordinates are millimetres of the canonical phantom
frame, all vectors in ``(z, y, x)`` order (x to patient left, y posterior, z superior).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

Vec3 = tuple[float, float, float]
BBox = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Axis-aligned grid given by increasing 1-D coordinate vectors (mm) per axis, ``(Z, Y, X)``."""

    zs: np.ndarray
    ys: np.ndarray
    xs: np.ndarray

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.zs, self.ys, self.xs

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.zs), len(self.ys), len(self.xs)

    def window(self, lo: Sequence[float], hi: Sequence[float]) -> BBox | None:
        """Slices of the voxels whose coordinates lie in ``[lo, hi]``; ``None`` if empty."""
        out = []
        for ax, a, b in zip(self.axes, lo, hi):
            i0 = int(np.searchsorted(ax, a, side="left"))
            i1 = int(np.searchsorted(ax, b, side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, bbox: BBox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinates of a box: shapes (z,1,1), (1,y,1), (1,1,x)."""
        z, y, x = (ax[s] for ax, s in zip(self.axes, bbox))
        return z[:, None, None], y[None, :, None], x[None, None, :]


def rotation_zyx(about_x: float = 0.0, about_y: float = 0.0, about_z: float = 0.0) -> np.ndarray:
    """3x3 rotation (degrees about the patient x, y, z axes) acting on ``(z, y, x)`` vectors."""
    m = Rotation.from_euler("xyz", [about_x, about_y, about_z], degrees=True).as_matrix()
    return np.ascontiguousarray(m[::-1, ::-1])


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Small random rotation (each Euler angle uniform in +-max_deg), ``(z, y, x)`` order."""
    return rotation_zyx(*rng.uniform(-max_deg, max_deg, size=3))


@dataclass(frozen=True)
class SmoothField:
    """Unit-variance random field: a k^3 lattice of Gaussian weights interpolated by Gaussian RBFs.

    Evaluation is separable (three small matrix products), so it costs a few operations per voxel.
    """

    lo: Vec3
    hi: Vec3
    coef: np.ndarray  # (k, k, k)

    @classmethod
    def sample(cls, rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float],
               k: int = 4) -> "SmoothField":
        return cls(tuple(map(float, lo)), tuple(map(float, hi)),  # type: ignore[arg-type]
                   rng.standard_normal((k, k, k)).astype(np.float32))

    def _basis(self, axis: int, t: np.ndarray) -> np.ndarray:
        k = self.coef.shape[axis]
        centers = np.linspace(self.lo[axis], self.hi[axis], k)
        width = max((self.hi[axis] - self.lo[axis]) / max(k - 1, 1), 1e-3)
        phi = np.exp(-0.5 * ((t[:, None] - centers[None, :]) / width) ** 2)
        phi /= np.sqrt((phi ** 2).sum(axis=1, keepdims=True)) + 1e-12
        return phi.astype(np.float32)

    def evaluate(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Field on the grid spanned by 1-D vectors ``z, y, x`` -> ``(len(z), len(y), len(x))``."""
        t = np.tensordot(self._basis(0, np.ravel(z)), self.coef, axes=(1, 0))   # (nz, ky, kx)
        t = np.tensordot(t, self._basis(1, np.ravel(y)), axes=(1, 1))          # (nz, kx, ny)
        t = np.tensordot(t, self._basis(2, np.ravel(x)), axes=(1, 1))          # (nz, ny, nx)
        return t


def _deform(f: np.ndarray, field: SmoothField | None, amp: float, coords) -> np.ndarray:
    """Add ``amp * tanh(field)``: bounded by ``amp``, so a shape grows by at most ``sqrt(1 + amp)``."""
    if field is not None and amp:
        f += np.float32(amp) * np.tanh(field.evaluate(*(np.ravel(c) for c in coords)))
    return f


@dataclass(frozen=True)
class Ellipsoid:
    """Rotated ellipsoid; ``rotation`` columns are its axes (z, y, x order), ``semi`` in mm."""

    center: Vec3
    semi: Vec3
    rotation: np.ndarray
    field: SmoothField | None = None
    amp: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, center: Sequence[float], semi: Sequence[float],
               rotation: np.ndarray | None = None, amp: float = 0.0, k: int = 4) -> "Ellipsoid":
        rot = np.eye(3) if rotation is None else rotation
        c, s = np.asarray(center, float), np.asarray(semi, float)
        half = cls._half_extent(rot, s)
        field = SmoothField.sample(rng, c - half, c + half, k) if amp else None
        return cls(tuple(c), tuple(s), rot, field, float(amp))  # type: ignore[arg-type]

    @staticmethod
    def _half_extent(rot: np.ndarray, semi: np.ndarray) -> np.ndarray:
        return np.sqrt(((rot * semi[None, :]) ** 2).sum(axis=1))

    def evaluate(self, grid: Grid) -> tuple[BBox | None, np.ndarray | None]:
        c = np.asarray(self.center)
        half = self._half_extent(self.rotation, np.asarray(self.semi)) * (1.0 + self.amp)
        bbox = grid.window(c - half, c + half)
        if bbox is None:
            return None, None
        coords = grid.coords(bbox)
        return bbox, _deform(self.plain(coords), self.field, self.amp, coords)

    def plain(self, coords) -> np.ndarray:
        """The undeformed implicit function (< 0 inside) at broadcastable ``(z, y, x)`` coordinates."""
        d = [(ax - ci).astype(np.float32) for ax, ci in zip(coords, self.center)]
        m = (self.rotation / np.asarray(self.semi)[None, :]).astype(np.float32)
        f = None
        for i in range(3):
            u = m[0, i] * d[0] + m[1, i] * d[1] + m[2, i] * d[2]
            f = u * u if f is None else f + u * u
        return np.asarray(f, dtype=np.float32) - np.float32(1.0)


@dataclass(frozen=True)
class Carved:
    """``base`` with the inside of ``cutter`` removed (``max(f_base, -f_cutter)``): an organ with an
    impression of its neighbours, e.g. the spleen's concave visceral surface."""

    base: Ellipsoid
    cutter: Ellipsoid

    def evaluate(self, grid: Grid) -> tuple[BBox | None, np.ndarray | None]:
        bbox, f = self.base.evaluate(grid)
        if bbox is None:
            return None, None
        return bbox, np.maximum(f, -self.cutter.plain(grid.coords(bbox)))


@dataclass(frozen=True)
class Tube:
    """Tube along grid axis ``axis`` (0 = z, 2 = x) through control points.

    ``knots`` rows: ``(t, a, b, ra, rb)`` — position along the axis, centre in the two other axes
    (in increasing axis order) and elliptical radii; linear in between.  ``taper`` rounds the ends.
    """

    axis: int
    knots: np.ndarray
    taper: bool = True
    field: SmoothField | None = None
    amp: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, axis: int, knots: Sequence[Sequence[float]],
               taper: bool = True, amp: float = 0.0, k: int = 4) -> "Tube":
        kn = np.asarray(knots, dtype=float)
        tube = cls(axis, kn, taper)
        if amp:
            lo, hi = tube._extent(0.0)
            tube = cls(axis, kn, taper, SmoothField.sample(rng, lo, hi, k), float(amp))
        return tube

    def _others(self) -> tuple[int, int]:
        a, b = (i for i in range(3) if i != self.axis)
        return a, b

    def _profile(self, t: np.ndarray) -> tuple[np.ndarray, ...]:
        kn = self.knots
        vals = [np.interp(t, kn[:, 0], kn[:, j]) for j in range(1, 5)]
        if self.taper:
            t0, t1 = kn[0, 0], kn[-1, 0]
            s = (2.0 * t - t0 - t1) / max(t1 - t0, 1e-6)
            shrink = np.sqrt(np.clip(1.0 - s ** 6, 0.0, 1.0))
            vals[2] = vals[2] * shrink
            vals[3] = vals[3] * shrink
        return tuple(vals)

    def _extent(self, amp: float) -> tuple[np.ndarray, np.ndarray]:
        t = np.linspace(self.knots[0, 0], self.knots[-1, 0], 64)
        ca, cb, ra, rb = self._profile(t)
        a, b = self._others()
        lo, hi = np.zeros(3), np.zeros(3)
        lo[self.axis], hi[self.axis] = t[0], t[-1]
        grow = 1.0 + amp
        lo[a], hi[a] = (ca - ra * grow).min(), (ca + ra * grow).max()
        lo[b], hi[b] = (cb - rb * grow).min(), (cb + rb * grow).max()
        return lo, hi

    def evaluate(self, grid: Grid) -> tuple[BBox | None, np.ndarray | None]:
        bbox = grid.window(*self._extent(self.amp))
        if bbox is None:
            return None, None
        coords = grid.coords(bbox)
        t = coords[self.axis]
        ca, cb, ra, rb = (np.asarray(v, dtype=np.float32) for v in self._profile(t))
        a, b = self._others()
        ra = np.maximum(ra, 1e-3)
        rb = np.maximum(rb, 1e-3)
        f = ((coords[a] - ca) / ra) ** 2 + ((coords[b] - cb) / rb) ** 2 - np.float32(1.0)
        return bbox, _deform(f.astype(np.float32, copy=False), self.field, self.amp, coords)


@dataclass(frozen=True)
class TorusArc:
    """C-shaped tube: a torus in the coronal (z, x) plane, open towards patient left (+x).

    ``radius`` is the C's radius, ``tube`` the tube's radius (mm), ``opening_deg`` the half-angle
    of the gap around +x.
    """

    center: Vec3
    radius: float
    tube: float
    opening_deg: float
    field: SmoothField | None = None
    amp: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, center: Sequence[float], radius: float, tube: float,
               opening_deg: float, amp: float = 0.0, k: int = 4) -> "TorusArc":
        c = np.asarray(center, float)
        r = radius + tube
        field = SmoothField.sample(rng, c - r, c + r, k) if amp else None
        return cls(tuple(c), float(radius), float(tube), float(opening_deg), field, float(amp))  # type: ignore[arg-type]

    def evaluate(self, grid: Grid) -> tuple[BBox | None, np.ndarray | None]:
        c = np.asarray(self.center)
        r = (self.radius + self.tube) * (1.0 + self.amp)
        half = np.array([r, self.tube * (1.0 + self.amp), r])
        bbox = grid.window(c - half, c + half)
        if bbox is None:
            return None, None
        coords = grid.coords(bbox)
        dz, dy, dx = ((ax - ci).astype(np.float32) for ax, ci in zip(coords, c))
        rho = np.sqrt(dz * dz + dx * dx) + np.float32(1e-3)
        f = ((rho - np.float32(self.radius)) ** 2 + dy * dy) / np.float32(self.tube ** 2) - np.float32(1.0)
        gap = np.clip(dx / rho - np.float32(np.cos(np.radians(self.opening_deg))), 0.0, None)
        f = f + np.float32(8.0) * gap
        return bbox, _deform(np.asarray(f, dtype=np.float32), self.field, self.amp, coords)


def paint(label: np.ndarray, grid: Grid, shape, value: int,
          allowed: np.ndarray | None = None) -> tuple[BBox | None, np.ndarray | None]:
    """Set ``label`` to ``value`` inside ``shape`` (where ``allowed``); returns ``(bbox, f)``."""
    bbox, f = shape.evaluate(grid)
    if bbox is None:
        return None, None
    inside = f < 0
    if allowed is not None:
        inside &= allowed[bbox]
    label[bbox][inside] = value
    return bbox, f
