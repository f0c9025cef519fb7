"""FLARE23 class registry and label-type helpers: the single source of truth (torch-free).

A *label type* is the sorted set of foreground classes annotated in a case.  It is printed as
the class indices joined by underscores, e.g. ``1_2_3_4_13_14``.  Background (0) is never part
of a label type: it is implicitly "annotated" wherever no annotated class is.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

BACKGROUND = 0
TUMOR = 14

#: index -> name, FLARE23 order.
CLASS_NAMES: dict[int, str] = {
    0: "background",
    1: "liver",
    2: "right_kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "inferior_vena_cava",
    7: "right_adrenal_gland",
    8: "left_adrenal_gland",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left_kidney",
    14: "tumor",
}
NAME_TO_INDEX: dict[str, int] = {v: k for k, v in CLASS_NAMES.items()}
NUM_CLASSES = len(CLASS_NAMES)  # including background
MAX_LABEL = NUM_CLASSES - 1

ORGANS: tuple[int, ...] = tuple(range(1, 14))
FOREGROUND: tuple[int, ...] = ORGANS + (TUMOR,)
ALL_ANNOTATED: tuple[int, ...] = FOREGROUND

LabelType = tuple[int, ...]


def label_type(classes: Iterable[int]) -> LabelType:
    """Normalise a collection of class indices to a label type (sorted unique, no background).

    Raises ``ValueError`` on indices outside 1..14.
    """
    out = set()
    for c in classes:
        ci = int(c)
        if ci == BACKGROUND:
            continue
        if ci not in CLASS_NAMES:
            raise ValueError(f"class index {c!r} is not a FLARE23 class (valid: 0..{MAX_LABEL})")
        out.add(ci)
    return tuple(sorted(out))


def type_to_str(t: Iterable[int]) -> str:
    """``(1, 2, 14)`` -> ``"1_2_14"``; the empty type prints as ``"none"``."""
    t = label_type(t)
    return "_".join(str(c) for c in t) if t else "none"


def str_to_type(s: str) -> LabelType:
    """Inverse of :func:`type_to_str`; also accepts spaces or commas as separators."""
    s = s.strip()
    if s in ("", "none"):
        return ()
    parts = s.replace(",", " ").replace("_", " ").split()
    try:
        return label_type(int(p) for p in parts)
    except ValueError as e:  # non-integer token or bad index
        raise ValueError(f"cannot parse label type {s!r}: {e}") from None


def describe_type(t: Iterable[int]) -> str:
    """A label type in words: ``all organs + tumor``, ``all organs but right_kidney + tumor`` (at
    most 3 organs missing, as after a nephrectomy), ``liver, pancreas``, ``tumor only``."""
    t = label_type(t)
    organs = [c for c in t if c in ORGANS]
    missing = [c for c in ORGANS if c not in t]
    if not missing:
        text = "all organs"
    elif len(missing) <= 3:
        text = "all organs but " + ", ".join(CLASS_NAMES[c] for c in missing)
    else:
        text = ", ".join(CLASS_NAMES[c] for c in organs)
    if TUMOR in t:
        text = f"{text} + tumor" if text else "tumor only"
    return text or "nothing annotated"


def classes_present(label: np.ndarray) -> LabelType:
    """Label type read off the values present in a label map (fallback without a manifest)."""
    return label_type(np.unique(label).tolist())


def has_tumor(t: Iterable[int]) -> bool:
    return TUMOR in label_type(t)


def is_tumor_only(t: Iterable[int]) -> bool:
    t = label_type(t)
    return t == (TUMOR,)


def pool_of(t: Iterable[int] | None) -> str:
    """Which intake pool a case belongs to: ``labeled``, ``tumor_only`` or ``unlabeled``."""
    if t is None:
        return "unlabeled"
    t = label_type(t)
    if not t:
        return "unlabeled"
    if is_tumor_only(t):
        return "tumor_only"
    return "labeled"


def unannotated(t: Iterable[int]) -> LabelType:
    """Foreground classes not in the label type."""
    t = set(label_type(t))
    return tuple(c for c in FOREGROUND if c not in t)
