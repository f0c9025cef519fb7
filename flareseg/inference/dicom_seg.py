"""A label map as a DICOM Segmentation (SEG) object that references its source DICOM series, for
clinical viewers and PACS (``flareseg predict --output-format dicom-seg`` on a DICOM series).

Written with highdicom (the optional extra ``flareseg[dicom-seg]``): one BINARY segment per class
present, coded with SNOMED CT (FLARE23's organs as anatomical structures, left/right as a type
modifier; the tumor as a neoplasm; another model's class names as "Tissue" with its name as the
label), algorithm type AUTOMATIC (flareseg and its version), the class colours of the previews.
Each frame references the source image (SOP Instance UID) it was segmented on; the SEG joins the
source study and frame of reference, in a new series.  Frames with no voxel of a segment are
omitted (standard practice; a reader treats them as empty).

The label map must lie on the series' grid (what ``flareseg predict`` writes for it): each source
slice's ImagePositionPatient falls on a slice of the label map and the orientation and size agree,
else :class:`ValueError` says which slice does not.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from flareseg.config import ConfigError
from flareseg.io import atomic_path, strip_suffix
from flareseg.overlay import colour_of
from flareseg.versions import versions

log = logging.getLogger(__name__)

#: where the grid must match: voxels (position) and direction cosines (orientation)
POSITION_TOL_VOXELS = 0.01
ORIENTATION_TOL = 1e-4
SERIES_DESCRIPTION = "flareseg segmentation"
SERIES_NUMBER = 9900

#: class name -> (SNOMED CT code of the structure's codes.SCT name, laterality or None)
FLARE_CODES: dict[str, tuple[str, str | None]] = {
    "liver": ("Liver", None), "right_kidney": ("Kidney", "Right"), "spleen": ("Spleen", None),
    "pancreas": ("Pancreas", None), "aorta": ("Aorta", None), "inferior_vena_cava": ("InferiorVenaCava", None),
    "right_adrenal_gland": ("AdrenalGland", "Right"), "left_adrenal_gland": ("AdrenalGland", "Left"),
    "gallbladder": ("Gallbladder", None), "esophagus": ("Esophagus", None), "stomach": ("Stomach", None),
    "duodenum": ("Duodenum", None), "left_kidney": ("Kidney", "Left"), "tumor": ("Neoplasm", None),
}


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError:
        raise ConfigError("--output-format dicom-seg needs highdicom: pip install 'flareseg[dicom-seg]'") from None
    return highdicom


def seg_path(label_map: str | os.PathLike) -> Path:
    """The DICOM SEG next to a label map: ``OUT/case.nii.gz`` -> ``OUT/case.dcm``."""
    p = Path(label_map)
    return p.parent / f"{strip_suffix(p.name)}.dcm"


def require_dicom_seg(segs: Mapping[str, Path]) -> None:
    """Refuse ``--output-format dicom-seg`` before any work (:class:`ConfigError`) when highdicom is
    missing or no case is a DICOM series (``segs``: the planned SEG per DICOM case)."""
    _highdicom()
    if not segs:
        raise ConfigError("--output-format dicom-seg: the input holds no DICOM series folder (a DICOM SEG "
                          "references the series it segments)")


def write_case_seg(labels: sitk.Image, series_folder: Path, names: Mapping[int, str], dest: Path,
                   series: Sequence[str] | None = None) -> Path:
    """:func:`write_dicom_seg` of one predicted case read from the DICOM series folder
    ``series_folder`` (``series``: the UIDs picking its series, as the predictor read it)."""
    from flareseg.dicom import pick_series
    return write_dicom_seg(labels, read_source_datasets(pick_series(series_folder, series).files), names, dest)


def read_source_datasets(files: Sequence[str | os.PathLike]) -> list:
    """The headers (no pixel data) of a series' files, for :func:`write_dicom_seg`."""
    _highdicom()
    import pydicom
    out = []
    for f in files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        # an anonymiser may blank the instance's UIDs in the data set; the file meta header repeats them
        for attr, meta_attr in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(attr) or "") and meta is not None and str(meta.get(meta_attr) or ""):
                setattr(ds, attr, meta.get(meta_attr))
        out.append(ds)
    return out


def source_slices(labels: sitk.Image, sources: Sequence[Any]) -> list[int]:
    """The label map's z index of each source dataset (in their order); :class:`ValueError` (one
    line naming the instance) when a dataset is not a slice of the label map's grid."""
    nx, ny, nz = labels.GetSize()
    d = np.asarray(labels.GetDirection(), dtype=float).reshape(3, 3)
    out: list[int] = []
    for ds in sources:
        name = f"source instance {getattr(ds, 'SOPInstanceUID', '?')}"
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not (np.allclose(iop[:3], d[:, 0], atol=ORIENTATION_TOL) and np.allclose(iop[3:], d[:, 1], atol=ORIENTATION_TOL)):
            raise ValueError(f"{name}: orientation {iop.round(4).tolist()} differs from the label map's "
                             f"(direction {d.round(4).ravel().tolist()}): labels must lie on the series' grid")
        if (int(ds.Columns), int(ds.Rows)) != (nx, ny):
            raise ValueError(f"{name}: {ds.Columns} x {ds.Rows} pixels, the label map {nx} x {ny}")
        i, j, k = labels.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient])
        kz = int(round(k))
        if max(abs(i), abs(j), abs(k - kz)) > POSITION_TOL_VOXELS or not 0 <= kz < nz:
            raise ValueError(f"{name}: its position falls at index ({i:.2f}, {j:.2f}, {k:.2f}) of the label map, "
                             f"not on one of its {nz} slices: labels must lie on the series' grid")
        out.append(kz)
    if len(set(out)) != len(out):
        raise ValueError("two source instances fall on the same slice of the label map")
    return out


def _segment(hd: Any, number: int, name: str, index: int) -> Any:
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.sr.codedict import codes
    code, side = FLARE_CODES.get(name, (None, None))
    if code == "Neoplasm":
        category = codes.SCT.MorphologicallyAbnormalStructure
    else:
        category = codes.SCT.AnatomicalStructure if code else codes.SCT.Tissue
    structure = getattr(codes.SCT, code) if code else codes.SCT.Tissue
    algorithm = hd.AlgorithmIdentificationSequence(name="flareseg", family=codes.cid7162.ArtificialIntelligence,
                                                   version=versions().get("flareseg") or "unknown")
    rgb = tuple(int(round(255 * c)) for c in colour_of(index))
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64], segmented_property_category=category,
        segmented_property_type=structure, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*rgb))
    if side:   # laterality: Segmented Property Type Modifier Code Sequence (0062,0011)
        c = getattr(codes.SCT, side)
        desc.SegmentedPropertyTypeModifierCodeSequence = DicomSequence(
            [hd.sr.CodedConcept(c.value, c.scheme_designator, c.meaning)])
    return desc


def write_dicom_seg(labels: sitk.Image, sources: Sequence[Any], names: Mapping[int, str],
                    dest: str | os.PathLike) -> Path:
    """Write ``labels`` (an integer label map on the grid of the series ``sources``: pydicom
    datasets, headers suffice) as a DICOM SEG object to ``dest`` (atomically): one segment per
    foreground class present, named by ``names`` (index -> class name), numbered from 1 in index
    order (an empty label map: every named class, no voxels).  Raises :class:`ValueError` for
    labels off the series' grid or a class ``names`` does not name,
    :class:`flareseg.config.ConfigError` without highdicom."""
    hd = _highdicom()
    if not sources:
        raise ValueError("no source DICOM instances to reference")
    slices = source_slices(labels, sources)
    arr = sitk.GetArrayViewFromImage(labels)
    present = [int(c) for c in np.unique(arr) if c != 0]
    unnamed = [c for c in present if c not in names]
    if unnamed:
        raise ValueError(f"label values {unnamed} have no class name")
    # an empty label map: every named class as a segment without voxels (all frames kept, empty)
    shown = present or sorted(c for c in names if c != 0)
    lut = np.zeros(max([int(arr.max()) if arr.size else 0, *shown]) + 1, dtype=np.uint16)
    lut[shown] = np.arange(1, len(shown) + 1)
    frames = lut[np.asarray(arr)[slices]].astype(np.uint8 if len(shown) < 256 else np.uint16)
    segments = [_segment(hd, n, names[c], c) for n, c in enumerate(shown, start=1)]
    if not segments:
        raise ValueError("no foreground class named: a DICOM SEG needs at least one segment")
    blank = [a for a in ("StudyInstanceUID", "SeriesInstanceUID") if not str(sources[0].get(a) or "")]
    if blank:
        log.warning("%s: the source series has no %s (anonymised?): the DICOM SEG references its images by "
                    "SOP Instance UID only", dest, " or ".join(blank))
    seg = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="flareseg",
        manufacturer_model_name="flareseg predict", software_versions=versions().get("flareseg") or "unknown",
        device_serial_number="0", content_label="FLARESEG", content_description=SERIES_DESCRIPTION,
        series_description=SERIES_DESCRIPTION)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        seg.save_as(str(tmp))
    return dest
