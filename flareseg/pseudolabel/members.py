"""Stage-2 per-case scorer: the fine model alone, or with extra uncertainty *members*.

Default (no extra member configured): the fine model's softmax stays on the device at model
resolution and is scored there a slab at a time
(:func:`~flareseg.pseudolabel.uncertainty.score_slab_stream`; one member: entropy only).

With any of ``pseudolabel.member_models``, ``member_tta`` or ``member_label_dirs`` set, every
member is brought to the scan's own (input) grid ``(Z, Y, X)``, kept on the host (float16
probabilities, uint8 labels) and scored a z-slab at a time on the device
(:func:`~flareseg.pseudolabel.uncertainty.score_members_in_slabs`), so the multi-member scores
(disagreement, inconsistency, overlap) exist while device memory stays bounded (also when a
label folder counts for some groups only, ``member_label_groups``):

1. the fine model: ``FastPredictor.run(image, save_probabilities=True)`` (float16, background 1
   outside the body crop); its argmax label map is the raw pseudo label, as without members;
2. ``member_models``: other nnU-Net model folders (checkpoints, folds, other trainings), each
   ``"<folder>"`` or ``"<folder>@<checkpoint file>"`` (e.g. ``...__fine@checkpoint_best.pth``),
   with their own predictor and the same inference settings; paths relative to the current
   directory, like every path in the config;
3. ``member_tta``: the fine model on the scan mirrored along the patient's left-right index axis
   (geometry kept), its probabilities flipped back.  Meaningful for models trained with mirroring
   augmentation (nnU-Net's default), whose left/right organs keep their labels when mirrored;
4. ``member_label_dirs``: hard label maps ``<folder>/<case_id>.nii.gz`` (other teams' pseudo
   labels) on the scan's grid.  A missing file or another geometry fails that case only, naming
   the file (:func:`flareseg.pseudolabel.shards.run_shard` records it and goes on).  Each folder
   counts for the *organ* score only unless ``member_label_groups`` says ``organ+tumor`` for it:
   the paper's external members (the FLARE22 winner's and the best-accuracy algorithm's pseudo
   labels) are organ-only, and a member that knows no tumor would make every tumor score
   meaningless (no tumor survives the mean, every tumor voxel "disagrees").  The tumor score uses
   the members that predict tumor: the fine model, ``member_models``, ``member_tta`` and the
   ``organ+tumor`` folders (``pseudolabel.tumor_score``, default ``score``, picks its score: with
   the fine model as the only tumor member, ``entropy``).

:func:`member_names` enter the score fingerprint, so changing the members rescores every case.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from flareseg.config import ConfigError, PseudoLabelConfig, config_hash, to_dict
from flareseg.inference.orientation import axial_reorientation
from flareseg.io import Geometry, InputError, geometry_mismatch, read_array, read_image, write_image
from flareseg.pseudolabel.uncertainty import MULTI_MEMBER_SCORES, score_members_in_slabs, score_slab_stream

log = logging.getLogger(__name__)

CaseScorer = Callable[[str], Mapping[str, float]]


def parse_model_member(spec: str) -> tuple[Path, str | None]:
    """``"<folder>@<checkpoint file>"`` -> (folder, checkpoint); no ``@<file>`` -> (folder, None).

    Only a final ``@`` followed by a plain file name counts, so folders containing ``@`` work."""
    folder, sep, ckpt = spec.rpartition("@")
    if sep and folder and ckpt and "/" not in ckpt and "\\" not in ckpt:
        return Path(folder), ckpt
    return Path(spec), None


def member_names(pc: PseudoLabelConfig) -> list[str]:
    """The extra members' names in scoring order (empty: the single-member default)."""
    return ([f"model:{m}" for m in pc.member_models] + (["mirror"] if pc.member_tta else [])
            + [f"labels:{d}" for d in pc.member_label_dirs])


def label_dir_groups(pc: PseudoLabelConfig) -> list[tuple[str, ...]]:
    """Per ``member_label_dirs`` entry, the score groups it counts for (default: organ only)."""
    kinds = pc.member_label_groups or ("organ",) * len(pc.member_label_dirs)
    return [("organ", "tumor") if k == "organ+tumor" else ("organ",) for k in kinds]


def tumor_score_name(pc: PseudoLabelConfig) -> str:
    """The score ranking tumors (``pseudolabel.tumor_score``, or ``score`` when unset)."""
    return pc.tumor_score or pc.score


def tumor_member_count(pc: PseudoLabelConfig) -> int:
    """Members that count for the tumor score: the fine model, member models, the mirror and the
    label folders marked ``organ+tumor``."""
    return (1 + len(pc.member_models) + int(pc.member_tta)
            + sum("tumor" in g for g in label_dir_groups(pc)))


def check_members(pc: PseudoLabelConfig) -> None:
    """Raise ``ValueError`` for a member setup that cannot work (before any case is scored):
    :class:`~flareseg.config.ConfigError` for a key combination that cannot work."""
    if pc.score in MULTI_MEMBER_SCORES and not member_names(pc):
        raise ConfigError(f"pseudolabel.score={pc.score} needs at least two members: set "
                          f"pseudolabel.member_models, member_tta or member_label_dirs")
    if pc.member_label_groups and len(pc.member_label_groups) != len(pc.member_label_dirs):
        raise ConfigError(f"pseudolabel.member_label_groups: {len(pc.member_label_groups)} entries for "
                          f"{len(pc.member_label_dirs)} member_label_dirs (one per folder, or none: "
                          f"organ only for every folder)")
    ts = tumor_score_name(pc)
    if ts in MULTI_MEMBER_SCORES and pc.k_tumor > 0 and tumor_member_count(pc) < 2:
        key = "tumor_score" if pc.tumor_score else "score"
        raise ConfigError(
            f"pseudolabel.{key}={ts} ranks tumors with only one member that predicts tumor (the "
            f"label folders count for organs only): set pseudolabel.tumor_score=entropy (the fine "
            f"model alone), add member_tta or member_models, or mark a folder organ+tumor in "
            f"pseudolabel.member_label_groups")
    for d in pc.member_label_dirs:
        if not Path(d).is_dir():
            raise ValueError(f"pseudolabel.member_label_dirs: {d} is not a folder")
    for m in pc.member_models:
        folder, _ = parse_model_member(m)
        if not (folder / "plans.json").is_file():
            raise ValueError(f"pseudolabel.member_models: {folder} is not an nnU-Net model folder "
                             f"(no plans.json)")


def score_fingerprint(checkpoint: Any, inference_cfg: Any, pc: PseudoLabelConfig) -> str:
    """Digest stored with each case's scores; a case with the same digest is not rescored.

    Without extra members it is exactly the digest stage-2 always used (no rescoring of old runs)."""
    key: dict[str, Any] = {"model": checkpoint, "inference": to_dict(inference_cfg), "tta": pc.tta}
    names = member_names(pc)
    if names:
        key["members"] = names
    if pc.member_label_dirs:   # what each folder counts for changes its scores
        key["label_groups"] = ["+".join(g) for g in label_dir_groups(pc)]
    return config_hash(key)


def lr_axis(image: sitk.Image) -> int:
    """Array axis (of ``GetArrayFromImage``, ``(Z, Y, X)`` order) along the patient's left-right:
    the one the predictor's reorientation puts last (axial layout's L-R axis)."""
    return axial_reorientation(image.GetDirection()).perm[2]


def mirror_lr(image: sitk.Image) -> tuple[sitk.Image, int]:
    """(``image`` flipped along its left-right array axis with the same geometry, that axis)."""
    ax = lr_axis(image)
    out = sitk.GetImageFromArray(np.flip(sitk.GetArrayViewFromImage(image), ax).copy())
    out.CopyInformation(image)
    return out, ax


def read_label_member(folder: Path, case_id: str, geometry: Geometry) -> np.ndarray:
    """Label map ``(Z, Y, X)`` of ``case_id`` from ``folder``, checked against the scan's grid."""
    path = Path(folder) / f"{case_id}.nii.gz"
    if not path.is_file():
        raise InputError(path, f"label member for case {case_id} is missing")
    lab, geo = read_array(path)
    bad = geometry_mismatch(geo, geometry)
    if bad:
        raise InputError(path, "label member grid differs from the scan: " + "; ".join(bad))
    return lab


def single_member_scorer(predictor, image_of: Callable[[str], Path | sitk.Image],
                         raw_dir: Path) -> CaseScorer:
    """The default: fine-model scores at model resolution on the device (its softmax a slab at a
    time, partial scores added), raw label written."""
    def scorer(cid: str) -> dict:
        pred = predictor.run(image_of(cid), slab_hook=score_slab_stream)
        write_image(sitk.Cast(pred.labels, sitk.sitkUInt8), raw_dir / f"{cid}.nii.gz")
        return pred.hook_result
    return scorer


class MultiMemberScorer:
    """Scores of the fine model plus the extra members of ``pc``, all at the scan's grid."""

    def __init__(self, predictor, pc: PseudoLabelConfig, inference_cfg: Any,
                 image_of: Callable[[str], Path | sitk.Image], raw_dir: Path,
                 member_predictors: Sequence[Any] | None = None, slab_mb: float = 256.0):
        """``member_predictors`` (one per ``pc.member_models``) defaults to loading each folder;
        ``slab_mb``: MB of float32 probabilities per z-slab scored on the device."""
        self.slab_mb = slab_mb
        from flareseg.inference.predictor import FastPredictor
        self.predictor, self.pc, self.image_of, self.raw_dir = predictor, pc, image_of, Path(raw_dir)
        if member_predictors is None:
            member_predictors = []
            for spec in pc.member_models:
                folder, ckpt = parse_model_member(spec)
                member_predictors.append(FastPredictor(folder, inference_cfg, tta=pc.tta,
                                                       checkpoint=ckpt))
        if len(member_predictors) != len(pc.member_models):
            raise ValueError(f"{len(member_predictors)} member predictors for "
                             f"{len(pc.member_models)} member_models")
        self.member_predictors = list(member_predictors)
        self.label_dirs = [Path(d) for d in pc.member_label_dirs]
        self.label_groups = label_dir_groups(pc)

    def _device(self) -> torch.device:
        return getattr(self.predictor, "device", torch.device("cpu"))

    def __call__(self, cid: str) -> dict[str, float]:
        image = self.image_of(cid)
        image = image if isinstance(image, sitk.Image) else read_image(image)
        geo = Geometry.of(image)
        labels = [read_label_member(d, cid, geo) for d in self.label_dirs]  # cheap checks first
        # every member's float16 probabilities stay on the host; they are scored a z-slab at a
        # time on the predictor's device, so device memory does not grow with the scan's size
        pred = self.predictor.run(image, save_probabilities=True)
        members: list[np.ndarray] = [pred.probabilities]
        raw = sitk.Cast(pred.labels, sitk.sitkUInt8)
        del pred
        for p in self.member_predictors:
            members.append(p.run(image, save_probabilities=True).probabilities)
        if self.pc.member_tta:
            mirrored, ax = mirror_lr(image)
            probs = self.predictor.run(mirrored, save_probabilities=True).probabilities
            members.append(np.flip(probs, ax + 1))
        first_label = len(members)
        members += labels
        # a z-slab at a time, label members limited to some groups (member_label_groups) too
        member_groups = [None] * first_label + list(self.label_groups)
        try:
            scores = score_members_in_slabs(members, self._device(), self.slab_mb,
                                            member_groups=member_groups)
        except ValueError as e:
            n = _member_index(e)
            if n is None or n < first_label:
                raise
            path = self.label_dirs[n - first_label] / f"{cid}.nii.gz"
            raise InputError(path, f"not a usable label member ({e})") from None
        write_image(raw, self.raw_dir / f"{cid}.nii.gz")
        return scores


def _member_index(e: ValueError) -> int | None:
    """``n`` of a ``"member <n>: ..."`` error of :mod:`flareseg.pseudolabel.uncertainty`."""
    head = str(e).split(":", 1)[0].split()
    return int(head[1]) if len(head) == 2 and head[0] == "member" and head[1].isdigit() else None


def make_scorer(predictor, pc: PseudoLabelConfig, inference_cfg: Any,
                image_of: Callable[[str], Path | sitk.Image], raw_dir: Path) -> CaseScorer:
    """Stage-2's per-case scorer for ``pc`` (see module doc): ``scorer(case_id) -> scores``.

    ``image_of(case_id)`` gives the scan's path (or an in-memory ``sitk.Image``, e.g. for benchmarks).
    The scorer writes ``raw_dir/<case_id>.nii.gz`` (the fine model's argmax) before returning."""
    if not member_names(pc):
        return single_member_scorer(predictor, image_of, raw_dir)
    log.info("stage-2 uncertainty members: fine model + %s", ", ".join(member_names(pc)))
    return MultiMemberScorer(predictor, pc, inference_cfg, image_of, raw_dir)
