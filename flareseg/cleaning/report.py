"""The cleaning report files: ``cleaning_report.csv`` (one row per removal) and
``cleaning_summary.csv`` (one row per case)."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from flareseg.cleaning.records import RECORD_COLUMNS, REASONS, Removal
from flareseg.io import write_text

REPORT_NAME = "cleaning_report.csv"
SUMMARY_NAME = "cleaning_summary.csv"
SUMMARY_COLUMNS = ("case", "file", "status", "foreground_voxels", "components_removed",
                   "voxels_removed") + REASONS + ("error",)


@dataclass
class CaseResult:
    """Outcome for one label file; ``reused`` marks a case taken from an up-to-date sidecar."""

    case: str
    file: str
    status: str                      # "ok" or "error"
    foreground_voxels: int = 0
    records: list[Removal] = field(default_factory=list)
    error: str = ""
    reused: bool = False

    def summary_row(self) -> dict:
        row = {"case": self.case, "file": self.file, "status": self.status,
               "foreground_voxels": self.foreground_voxels,
               "components_removed": len(self.records),
               "voxels_removed": sum(r.voxels for r in self.records), "error": self.error}
        for reason in REASONS:
            row[reason] = sum(1 for r in self.records if r.reason == reason)
        return row


@dataclass
class CleaningReport:
    """What :func:`flareseg.cleaning.folder.clean_folder` did; paths of the files it wrote."""

    cases: list[CaseResult]
    report_csv: Path
    summary_csv: Path

    @property
    def records(self) -> list[Removal]:
        return [r for c in self.cases for r in c.records]

    @property
    def errors(self) -> list[CaseResult]:
        return [c for c in self.cases if c.status != "ok"]

    @property
    def reused(self) -> int:
        return sum(c.reused for c in self.cases)


def _csv(columns: tuple[str, ...], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_reports(cases: list[CaseResult], out_dir: os.PathLike | str) -> CleaningReport:
    """Write both CSVs atomically into ``out_dir``; rows follow the order of ``cases``."""
    out = Path(out_dir)
    report = write_text(_csv(RECORD_COLUMNS, [r.row() for c in cases for r in c.records]),
                        out / REPORT_NAME)
    summary = write_text(_csv(SUMMARY_COLUMNS, [c.summary_row() for c in cases]),
                         out / SUMMARY_NAME)
    return CleaningReport(cases, report, summary)


def read_report(path: os.PathLike | str) -> list[Removal]:
    """Removals listed in a ``cleaning_report.csv``."""
    with open(path, newline="") as f:
        return [Removal.from_row(row) for row in csv.DictReader(f)]
