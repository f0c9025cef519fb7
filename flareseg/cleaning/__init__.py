"""Label cleaning (stage 4): small components, tumors outside the abdomen, tumors far from organs.

Pure functions on ``(Z, Y, X)`` label maps with spacing in mm; every removal is reported as a
:class:`Removal`.  :func:`clean_folder` applies them to a folder, non-destructively and idempotently.
"""
from flareseg.cleaning.clean import clean_label
from flareseg.cleaning.folder import clean_folder
from flareseg.cleaning.records import (FAR_FROM_ORGANS, OUTSIDE_ABDOMEN, REASONS, SMALL_COMPONENT,
                                       Removal)
from flareseg.cleaning.report import CaseResult, CleaningReport, read_report
from flareseg.cleaning.small_components import remove_small_components
from flareseg.cleaning.tumor_distance import remove_tumors_far_from_organs, tumor_organ_distance
from flareseg.cleaning.tumor_region import remove_tumors_outside_abdomen

__all__ = ["clean_label", "clean_folder", "CleaningReport", "CaseResult", "read_report",
           "remove_small_components", "remove_tumors_outside_abdomen",
           "remove_tumors_far_from_organs", "tumor_organ_distance", "Removal",
           "SMALL_COMPONENT", "OUTSIDE_ABDOMEN", "FAR_FROM_ORGANS", "REASONS"]
