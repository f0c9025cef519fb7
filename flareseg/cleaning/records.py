"""Removal records: one row per connected component a cleaning rule removed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from flareseg.labels import CLASS_NAMES

#: reasons a component is removed, one per rule
SMALL_COMPONENT = "small_component"
OUTSIDE_ABDOMEN = "outside_abdomen"
FAR_FROM_ORGANS = "far_from_organs"
REASONS = (SMALL_COMPONENT, OUTSIDE_ABDOMEN, FAR_FROM_ORGANS)

#: CSV columns of ``cleaning_report.csv`` (order matters: it is the file's header)
RECORD_COLUMNS = ("case", "class", "class_name", "voxels", "volume_mm3", "reason",
                  "distance_mm", "bbox_zyx")


@dataclass(frozen=True)
class Removal:
    """One removed component. ``bbox`` is ``((z0, z1), (y0, y1), (x0, x1))`` in voxels (stop
    exclusive) of the full array; ``distance_mm`` is the tumor-organ distance for the distance
    rule when it was measured (``None`` when no organ lay within the search box)."""

    case: str
    cls: int
    voxels: int
    volume_mm3: float
    reason: str
    bbox: tuple[tuple[int, int], ...]
    distance_mm: float | None = None

    @property
    def class_name(self) -> str:
        return CLASS_NAMES.get(self.cls, f"class_{self.cls}")

    def row(self) -> dict[str, Any]:
        """Flat CSV/JSON row with the columns of :data:`RECORD_COLUMNS`."""
        return {"case": self.case, "class": self.cls, "class_name": self.class_name,
                "voxels": self.voxels, "volume_mm3": self.volume_mm3,
                "reason": self.reason,
                "distance_mm": "" if self.distance_mm is None else self.distance_mm,
                "bbox_zyx": " ".join(f"{a}:{b}" for a, b in self.bbox)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Removal":
        bbox = tuple(tuple(int(v) for v in s.split(":")) for s in str(row["bbox_zyx"]).split())
        dist = row.get("distance_mm", "")
        return cls(case=str(row["case"]), cls=int(row["class"]), voxels=int(row["voxels"]),
                   volume_mm3=float(row["volume_mm3"]), reason=str(row["reason"]),
                   bbox=bbox, distance_mm=None if dist in ("", None) else float(dist))


def voxel_volume_mm3(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mm³."""
    z, y, x = (float(s) for s in spacing)
    return z * y * x


def record_of(comp: Any, spacing: Sequence[float], reason: str, case: str = "",
              distance_mm: float | None = None) -> Removal:
    """Removal record for a :class:`flareseg.cleaning.components.Component` (mm³ and mm rounded
    to 3 decimals, as in the report, so records read back from a report compare equal)."""
    return Removal(case=case, cls=comp.cls, voxels=comp.voxels,
                   volume_mm3=round(comp.voxels * voxel_volume_mm3(spacing), 3), reason=reason,
                   bbox=tuple((s.start, s.stop) for s in comp.bbox),
                   distance_mm=None if distance_mm is None else round(float(distance_mm), 3))
