"""Stage-2 extra uncertainty members: model folders, mirrored TTA, external label folders."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from flareseg.config import (Config, ConfigError, InferenceConfig, PseudoLabelConfig, config_from_dict,
                             config_hash, load_config, to_dict)
from flareseg.inference.predictor import FastPredictor, Prediction
from flareseg.io import Geometry, InputError, read_array, read_image, read_json, write_array, write_json
from flareseg.labels import ORGANS
from tiny_model import write_model_folder
from flareseg.pipeline.stage import StageContext
from flareseg.work_layout import stage_dir
from flareseg.pseudolabel.members import (check_members, label_dir_groups, lr_axis, make_scorer, member_names,
                                          mirror_lr, parse_model_member, score_fingerprint, tumor_member_count)
from flareseg.pseudolabel.shards import run_shard
from flareseg.pseudolabel.uncertainty import case_scores
from tiny import tiny_case

GEO = Geometry((40, 40, 24), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
BIAS = [0, 3, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]   # random weights + bias: organs 1, 3, 4 predicted
CASES = ("u00", "u01", "u02")
INF = InferenceConfig(device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model folder, three unlabeled scans, and each scan's main-model argmax at its grid."""
    root = tmp_path_factory.mktemp("members")
    model = write_model_folder(root / "model", seed=3, class_bias=BIAS)
    images = root / "imagesUnlabeled"
    for j, cid in enumerate(CASES):
        write_array(tiny_case(100 + j)[0], GEO, images / f"{cid}_0000.nii.gz")
    pred = FastPredictor(model, INF)
    main = {cid: torch.from_numpy(pred.run(images / f"{cid}_0000.nii.gz", save_probabilities=True)
                                  .probabilities).float().max(0).indices.numpy().astype(np.uint8)
            for cid in CASES}
    return root, model, images, main


def image_of(images: Path):
    return lambda cid: images / f"{cid}_0000.nii.gz"


def disagreement_by_hand(a: np.ndarray, b: np.ndarray, classes=ORGANS) -> float:
    in_g = np.isin(a, classes) | np.isin(b, classes)
    return float(((a != b) & in_g).sum() / in_g.sum())


def score_case(setup, tmp_path, pc: PseudoLabelConfig, cid: str = "u00") -> dict:
    root, model, images, _ = setup
    scorer = make_scorer(FastPredictor(model, INF, tta=pc.tta), pc, INF, image_of(images),
                         tmp_path / "raw")
    return dict(scorer(cid))


# ------------------------------------------------------------------ parsing, config, fingerprint

def test_parse_model_member():
    assert parse_model_member("w/m__fine@checkpoint_best.pth") == (Path("w/m__fine"), "checkpoint_best.pth")
    assert parse_model_member("w/m__fine") == (Path("w/m__fine"), None)
    assert parse_model_member("/x@y/model") == (Path("/x@y/model"), None)   # '@' inside a folder name


def test_config_round_trip_yaml_and_set(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("pseudolabel:\n  score: disagreement\n  member_models: [a/model@checkpoint_best.pth]\n"
                 "  member_label_dirs:\n    - teamA\n    - teamB\n")
    cfg = load_config(y, ["pseudolabel.member_tta=true"])
    pc = cfg.pseudolabel
    assert pc.member_models == ("a/model@checkpoint_best.pth",)
    assert pc.member_label_dirs == ("teamA", "teamB") and pc.member_tta is True
    cfg2 = load_config(None, ["pseudolabel.member_label_dirs=[x, y]", "pseudolabel.member_models=[m]"])
    assert cfg2.pseudolabel.member_label_dirs == ("x", "y") and cfg2.pseudolabel.member_models == ("m",)
    assert config_from_dict(to_dict(cfg)) == cfg                   # resolved-config round trip
    (tmp_path / "dump.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert load_config(tmp_path / "dump.yaml") == cfg
    assert member_names(pc) == ["model:a/model@checkpoint_best.pth", "mirror", "labels:teamA",
                                "labels:teamB"]
    d = PseudoLabelConfig()
    assert (d.member_models, d.member_tta, d.member_label_dirs) == ((), False, ())
    assert member_names(Config().pseudolabel) == []


def test_check_members_fails_early(tmp_path):
    with pytest.raises(ValueError, match="needs at least two members"):
        check_members(PseudoLabelConfig(score="disagreement"))
    with pytest.raises(ValueError, match="not a folder"):
        check_members(PseudoLabelConfig(member_label_dirs=(str(tmp_path / "nope"),)))
    with pytest.raises(ValueError, match="no plans.json"):
        check_members(PseudoLabelConfig(member_models=(f"{tmp_path}@checkpoint_best.pth",)))
    check_members(PseudoLabelConfig(score="disagreement", member_tta=True))


def test_fingerprint_default_unchanged_and_members_change_it():
    inf, pc = InferenceConfig(), PseudoLabelConfig()
    old = config_hash({"model": "ck", "inference": to_dict(inf), "tta": False})   # stage-2's digest so far
    assert score_fingerprint("ck", inf, pc) == old
    fps = {score_fingerprint("ck", inf, PseudoLabelConfig(member_tta=True)),
           score_fingerprint("ck", inf, PseudoLabelConfig(member_label_dirs=("a",))),
           score_fingerprint("ck", inf, PseudoLabelConfig(member_label_dirs=("b",)))}
    assert len(fps) == 3 and old not in fps


# ------------------------------------------------------------------ mirrored member

def test_lr_axis_follows_the_direction_matrix():
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    assert lr_axis(img) == 2                                   # axial: x is the last array axis
    img.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))              # index axis 2 (array axis 0) along x
    assert lr_axis(img) == 0
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    src = sitk.GetImageFromArray(arr)
    src.SetSpacing((1.0, 2.0, 3.0))
    src.SetOrigin((5.0, 6.0, 7.0))
    m, ax = mirror_lr(src)
    assert ax == 2 and np.array_equal(sitk.GetArrayFromImage(m), arr[:, :, ::-1])
    assert Geometry.of(m) == Geometry.of(src)


class StubPredictor:
    """Predicts one-hot probabilities by a rule on the image array (no network)."""
    device = torch.device("cpu")

    def __init__(self, rule):
        self.rule = rule

    def run(self, image, save_probabilities=False, prob_hook=None):
        lab = self.rule(sitk.GetArrayFromImage(image)).astype(np.uint8)
        probs = np.eye(15, dtype=np.float16)[lab].transpose(3, 0, 1, 2)
        out = sitk.GetImageFromArray(lab)
        out.CopyInformation(image)
        return Prediction(out, probs if save_probabilities else None)


def mirror_scores(tmp_path, rule, in_memory: bool = False) -> tuple[dict, np.ndarray]:
    arr = np.zeros((2, 3, 8), np.int16)
    arr[:, :, :3] = 1          # asymmetric scan: 'liver' intensity on the left three columns
    geo = Geometry((8, 3, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), GEO.direction)
    path = write_array(arr, geo, tmp_path / "c_0000.nii.gz")
    image = geo.apply(sitk.GetImageFromArray(arr)) if in_memory else path
    pc = PseudoLabelConfig(member_tta=True)
    scorer = make_scorer(StubPredictor(rule), pc, INF, lambda c: image, tmp_path)
    return dict(scorer("c")), arr


def test_mirrored_member_is_flipped_back(tmp_path):
    # a prediction that follows the image content: the flipped-back mirror member agrees everywhere
    s, _ = mirror_scores(tmp_path, lambda a: np.where(a == 1, 1, 3))
    assert s["n_members"] == 2 and s["organ_disagreement"] == 0 and s["organ_overlap"] == 1


def test_mirrored_member_of_a_position_rule(tmp_path):
    # a prediction that ignores the content (liver in columns 0..1 of the array): the mirror member
    # calls columns 6..7 liver, so 4 of 8 columns disagree
    def rule(a):
        lab = np.full(a.shape, 3)
        lab[:, :, :2] = 1
        return lab
    s, arr = mirror_scores(tmp_path, rule, in_memory=True)
    main = rule(arr)
    mirrored = rule(arr)[:, :, ::-1]
    assert s["organ_disagreement"] == pytest.approx(disagreement_by_hand(main, mirrored)) == 0.5


# ------------------------------------------------------------------ label and model members

def test_identical_label_member_gives_zero_disagreement(setup, tmp_path):
    root, model, images, main = setup
    for cid in CASES:
        write_array(main[cid], GEO, tmp_path / "same" / f"{cid}.nii.gz")
    s = score_case(setup, tmp_path, PseudoLabelConfig(member_label_dirs=(str(tmp_path / "same"),)))
    assert s["n_members"] == 2 and s["organ_voxels"] > 0
    assert s["organ_disagreement"] == 0 and s["organ_overlap"] == 1
    assert math.isnan(s["tumor_disagreement"])          # no member predicts tumor anywhere


def test_differing_label_member_matches_hand_count(setup, tmp_path):
    root, model, images, main = setup
    other = main["u00"].copy()
    other[4:10, 8:20, 10:30] = 2                      # a block relabelled as right kidney
    other[12:14, 30:35, 5:9] = 14                     # and a small 'tumor'
    write_array(other, GEO, tmp_path / "team" / "u00.nii.gz")
    both = PseudoLabelConfig(member_label_dirs=(str(tmp_path / "team"),), member_label_groups=("organ+tumor",))
    s = score_case(setup, tmp_path, both)
    expected = disagreement_by_hand(main["u00"], other)
    assert 0 < expected < 1 and s["organ_disagreement"] == pytest.approx(expected, rel=1e-9)
    assert s["tumor_disagreement"] == 1.0             # only the member predicts tumor: all disagree
    # by default a label folder counts for organs only: its 'tumor' voxels leave the organ score
    s = score_case(setup, tmp_path, PseudoLabelConfig(member_label_dirs=(str(tmp_path / "team"),)))
    outside = other != 14
    expected = disagreement_by_hand(main["u00"][outside], other[outside])
    assert s["organ_disagreement"] == pytest.approx(expected, rel=1e-9)
    assert s["tumor_members"] == 1 and s["tumor_voxels"] == 0 and math.isnan(s["tumor_disagreement"])
    # the raw pseudo label is still the main model's own argmax
    raw, _ = read_array(tmp_path / "raw" / "u00.nii.gz")
    own = FastPredictor(model, INF).predict(images / "u00_0000.nii.gz")
    assert np.array_equal(raw, sitk.GetArrayFromImage(own))


def test_bad_member_file_fails_only_that_case(setup, tmp_path):
    root, model, images, main = setup
    team = tmp_path / "team"
    write_array(main["u00"], GEO, team / "u00.nii.gz")
    shifted = Geometry(GEO.size, GEO.spacing, (0.0, 0.0, 30.0), GEO.direction)
    write_array(main["u02"], shifted, team / "u02.nii.gz")           # u01 missing, u02 misplaced
    pc = PseudoLabelConfig(member_label_dirs=(str(team),))
    scorer = make_scorer(FastPredictor(model, INF), pc, INF, image_of(images), tmp_path / "raw")
    summary = run_shard(CASES, scorer, tmp_path / "scores", fingerprint=score_fingerprint("ck", INF, pc))
    assert summary.computed == ["u00"]
    assert str(team / "u01.nii.gz") in summary.failed["u01"] and "missing" in summary.failed["u01"]
    assert str(team / "u02.nii.gz") in summary.failed["u02"] and "origin" in summary.failed["u02"]
    assert (tmp_path / "scores" / "errors" / "u01.json").exists()
    with pytest.raises(InputError, match="u01.nii.gz"):
        scorer("u01")


def test_label_values_out_of_range_name_the_file(setup, tmp_path):
    root, model, images, main = setup
    write_array(np.full(GEO.shape_zyx, 20, np.uint8), GEO, tmp_path / "t" / "u00.nii.gz")
    with pytest.raises(InputError, match=r"u00\.nii\.gz.*label values"):
        score_case(setup, tmp_path, PseudoLabelConfig(member_label_dirs=(str(tmp_path / "t"),)))


def test_model_member_uses_the_named_checkpoint(setup, tmp_path):
    root, model, images, main = setup
    other = write_model_folder(tmp_path / "other", seed=5, class_bias=BIAS)
    s_final = score_case(setup, tmp_path, PseudoLabelConfig(member_models=(str(other),)))
    assert s_final["n_members"] == 2 and s_final["organ_disagreement"] > 0
    # checkpoint_best of 'other' holds the main model's weights: the members then agree exactly
    shutil.copy(model / "fold_0" / "checkpoint_final.pth", other / "fold_0" / "checkpoint_best.pth")
    s_best = score_case(setup, tmp_path, PseudoLabelConfig(member_models=(f"{other}@checkpoint_best.pth",)))
    assert s_best["organ_disagreement"] == 0 and s_best["organ_inconsistency"] == pytest.approx(0, abs=1e-3)


def test_default_scorer_is_the_single_member_model_resolution_path(setup, tmp_path):
    root, model, images, main = setup
    pred = FastPredictor(model, INF)
    s = score_case(setup, tmp_path, PseudoLabelConfig())
    ref = pred.run(images / "u00_0000.nii.gz", prob_hook=case_scores).hook_result
    assert s == ref and s["n_members"] == 1 and "organ_disagreement" not in s
    raw, _ = read_array(tmp_path / "raw" / "u00.nii.gz")
    assert np.array_equal(raw, sitk.GetArrayFromImage(pred.predict(images / "u00_0000.nii.gz")))


def test_rerun_skips_finished_cases_and_new_members_rescore(setup, tmp_path):
    root, model, images, main = setup
    for cid in CASES:
        write_array(main[cid], GEO, tmp_path / "same" / f"{cid}.nii.gz")
    pred = FastPredictor(model, INF)
    same = (str(tmp_path / "same"),)
    for pc, computed in [(PseudoLabelConfig(member_label_dirs=same), 3),        # first run
                         (PseudoLabelConfig(member_label_dirs=same), 0),        # unchanged: skipped
                         (PseudoLabelConfig(member_label_dirs=same, member_tta=True), 3)]:  # new member
        scorer = make_scorer(pred, pc, INF, image_of(images), tmp_path / "raw")
        summary = run_shard(CASES, scorer, tmp_path, fingerprint=score_fingerprint("ck", INF, pc))
        assert len(summary.computed) == computed and not summary.failed


# ------------------------------------------------------------------ the stage, end to end

def fake_stage1(work: Path, root: Path, model: Path) -> None:
    """What stage-2 reads from stage-1: the dataset's unlabeled images and the fine model."""
    ds = root / "dataset"
    if not ds.exists():
        shutil.copytree(root / "imagesUnlabeled", ds / "imagesUnlabeled")
        write_json({"labeled": [], "tumor_only": [], "unlabeled": list(CASES)}, ds / "cases.json")
        write_json({}, ds / "label_types.json")
    write_json({"key": "k", "result": {"dataset": str(ds), "model_dir": str(model),
                                       "training": {"checkpoint": "checkpoint_final.pth"}}},
               stage_dir(work, 1) / "manifest.json")


def run_stage2(work: Path, pc: PseudoLabelConfig) -> dict:
    from flareseg.pipeline.stage2_pseudo import run
    return run(StageContext(2, Config(pseudolabel=pc, inference=INF), work))


def test_stage2_selects_by_disagreement_with_label_members(setup, tmp_path):
    root, model, images, main = setup
    fake_stage1(tmp_path, root, model)
    team = tmp_path / "team"
    write_array(main["u00"], GEO, team / "u00.nii.gz")              # agrees: most confident
    noisy = main["u01"].copy()
    noisy[2:20, 5:35, 5:35] = 2
    write_array(noisy, GEO, team / "u01.nii.gz")                     # disagrees; u02: no file
    pc = PseudoLabelConfig(k_organ=1, k_tumor=0, score="disagreement", member_label_dirs=(str(team),),
                           fill_in_organs=False)
    res = run_stage2(tmp_path, pc)
    assert (res["scored"], res["failed"], res["selected"]) == (2, 1, 1)
    sel = read_json(tmp_path / "stage-2-pseudolabels" / "training_additions.json")
    assert list(sel) == ["u00"] and sel["u00"]["source"] == "pseudo"
    csv = (tmp_path / "stage-2-pseudolabels" / "report" / "uncertainty.csv").read_text()
    assert "organ_disagreement" in csv and "organ_inconsistency" in csv
    raw_members, _ = read_array(tmp_path / "stage-2-pseudolabels" / "raw" / "u01.nii.gz")

    # the default config on the same work folder: single-member scores, same raw labels
    shutil.rmtree(tmp_path / "stage-2-pseudolabels")
    res = run_stage2(tmp_path, PseudoLabelConfig(k_organ=1, k_tumor=0, fill_in_organs=False))
    assert (res["scored"], res["failed"]) == (3, 0)
    d = read_json(tmp_path / "stage-2-pseudolabels" / "scores" / "scores" / "u00.json")
    assert d["scores"]["n_members"] == 1 and "organ_disagreement" not in d["scores"]
    assert d["fingerprint"] == score_fingerprint("checkpoint_final.pth", INF, PseudoLabelConfig())
    raw_default, _ = read_array(tmp_path / "stage-2-pseudolabels" / "raw" / "u01.nii.gz")
    assert np.array_equal(raw_members, raw_default)


def test_stage2_refuses_multi_member_score_without_members(setup, tmp_path):
    root, model, images, main = setup
    fake_stage1(tmp_path, root, model)
    with pytest.raises(ConfigError, match="member_tta"):        # a config error: exit 2
        run_stage2(tmp_path, PseudoLabelConfig(score="inconsistency"))


# ------------------------------------------------------------------ the paper's setup: organ-only external members

class SoftStub:
    """A fine model with known soft output: per scan (looked up by its voxels) a label map and the
    probability of its argmax (the rest spread evenly over the other 14 classes)."""
    device = torch.device("cpu")

    def __init__(self, by_scan: dict[bytes, tuple[np.ndarray, float]]):
        self.by_scan = by_scan

    def run(self, image, save_probabilities=False, prob_hook=None):
        image = image if isinstance(image, sitk.Image) else read_image(image)
        lab, conf = self.by_scan[sitk.GetArrayFromImage(image).tobytes()]
        probs = np.full((15,) + lab.shape, (1 - conf) / 14, np.float32)
        np.put_along_axis(probs, lab[None].astype(np.int64), conf, 0)
        out = sitk.GetImageFromArray(lab)
        out.CopyInformation(image)
        return Prediction(out, probs if save_probabilities else None)


#: per case: tumor probability of the stub fine model (None: it predicts no tumor in that case)
CONF = {"u00": 0.55, "u01": 0.95, "u02": None}


def paper_setup(setup, tmp_path):
    """Stub fine model + two organ-only label folders (its labels with tumor called liver; team B
    relabels a block of u00, so u00 is the least organ-confident)."""
    root, model, images, main = setup
    by_scan, fine = {}, {}
    for j, cid in enumerate(CASES):
        lab = tiny_case(100 + j)[1]
        if CONF[cid] is None:
            lab = np.where(lab == 14, 1, lab).astype(np.uint8)
        by_scan[read_array(images / f"{cid}_0000.nii.gz")[0].tobytes()] = (lab, CONF[cid] or 0.9)
        fine[cid] = lab
        organ_only = np.where(lab == 14, 1, lab).astype(np.uint8)
        write_array(organ_only, GEO, tmp_path / "teamA" / f"{cid}.nii.gz")
        if cid == "u00":
            organ_only = organ_only.copy()
            organ_only[4:20, 5:20, 5:20] = 2
        write_array(organ_only, GEO, tmp_path / "teamB" / f"{cid}.nii.gz")
    return SoftStub(by_scan), fine, (str(tmp_path / "teamA"), str(tmp_path / "teamB"))


def test_organ_only_label_members_do_not_break_the_tumor_score(setup, tmp_path):
    stub, fine, teams = paper_setup(setup, tmp_path)
    root, model, images, main = setup
    pc = PseudoLabelConfig(member_label_dirs=teams)           # default: organ only
    scorer = make_scorer(stub, pc, INF, image_of(images), tmp_path / "raw")
    s = dict(scorer("u01"))
    own = case_scores(stub.run(images / "u01_0000.nii.gz", save_probabilities=True).probabilities)
    assert s["n_members"] == 3 and s["tumor_members"] == 1 and s["organ_members"] == 3
    assert s["tumor_voxels"] == (fine["u01"] == 14).sum() > 0
    assert s["tumor_entropy"] == pytest.approx(own["tumor_entropy"], rel=1e-5)   # float32 sums
    assert s["organ_disagreement"] == 0                      # tumor voxels left out of the organ score
    # marked organ+tumor, a folder joins the tumor score (and calls every tumor voxel liver)
    pc2 = PseudoLabelConfig(member_label_dirs=teams, member_label_groups=("organ+tumor", "organ"))
    s2 = dict(make_scorer(stub, pc2, INF, image_of(images), tmp_path / "raw2")("u01"))
    assert s2["tumor_members"] == 2 and s2["tumor_disagreement"] == 1.0
    fp = {score_fingerprint("ck", INF, p) for p in (pc, pc2)}
    assert len(fp) == 2                                      # what a folder counts for rescores


def test_member_label_groups_and_tumor_score_config(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("pseudolabel:\n  score: disagreement\n  tumor_score: entropy\n"
                 "  member_label_dirs: [a, b]\n  member_label_groups: [organ, organ+tumor]\n")
    pc = load_config(y).pseudolabel
    assert pc.member_label_groups == ("organ", "organ+tumor") and pc.tumor_score == "entropy"
    assert PseudoLabelConfig().member_label_groups == () and PseudoLabelConfig().tumor_score is None
    with pytest.raises(ConfigError, match="member_label_groups"):
        load_config(None, ["pseudolabel.member_label_groups=[tumor]"])
    a, b = str(tmp_path), str(tmp_path)
    with pytest.raises(ConfigError, match="1 entries for 2 member_label_dirs"):
        check_members(PseudoLabelConfig(member_label_dirs=(a, b), member_label_groups=("organ",)))
    # organ-only folders leave one tumor member: a multi-member tumor score cannot rank tumors
    with pytest.raises(ConfigError, match="tumor_score=entropy"):
        check_members(PseudoLabelConfig(score="disagreement", member_label_dirs=(a, b)))
    for ok in (PseudoLabelConfig(score="disagreement", tumor_score="entropy", member_label_dirs=(a, b)),
               PseudoLabelConfig(score="disagreement", member_label_dirs=(a, b), member_tta=True),
               PseudoLabelConfig(score="disagreement", member_label_dirs=(a, b), k_tumor=0),
               PseudoLabelConfig(score="disagreement", member_label_dirs=(a, b),
                                 member_label_groups=("organ", "organ+tumor"))):
        check_members(ok)


def test_stage2_paper_setup_ranks_tumors_by_the_fine_model(setup, tmp_path, monkeypatch):
    import csv
    stub, fine, teams = paper_setup(setup, tmp_path)
    root, model, images, main = setup
    fake_stage1(tmp_path, root, model)
    import flareseg.inference.predictor as predictor_module
    made = []   # stage-2 imports it per run
    monkeypatch.setattr(predictor_module, "FastPredictor", lambda *a, **k: made.append(a) or stub)
    pc = PseudoLabelConfig(k_organ=3, k_tumor=1, score="disagreement", tumor_score="entropy",
                           member_label_dirs=teams, fill_in_organs=False)
    res = run_stage2(tmp_path, pc)
    assert made[0][1].deterministic is True   # selection independent of the GPUs that scored (issue 26)
    assert (res["scored"], res["failed"], res["selected"], res["tumor_kept"]) == (3, 0, 3, 1)
    rep = tmp_path / "stage-2-pseudolabels" / "report"
    rows = {r["case_id"]: r for r in csv.DictReader((rep / "selection.csv").open())}
    assert "nan" not in (rep / "selection.csv").read_text().lower()
    assert rows["u00"]["organ_rank"] == "3"                           # team B disagrees on u00
    # tumors: u01 (the fine model is sure) before u00 (unsure); u02 has no tumor: last, and why
    assert [rows[c]["keep_tumor"] for c in CASES] == ["0", "1", "0"]
    assert (rows["u01"]["tumor_rank"], rows["u00"]["tumor_rank"], rows["u02"]["tumor_rank"]) == ("1", "2", "3")
    assert rows["u02"]["tumor_score"] == "" and rows["u02"]["tumor_note"] == "no member predicts a tumor"
    lab, _ = read_array(tmp_path / "stage-2-pseudolabels" / "pseudo_labels" / "u01.nii.gz")
    assert (lab == 14).sum() == (fine["u01"] == 14).sum()           # the kept tumor is the fine model's
    # the same setup ranking tumors by disagreement is refused before any case is scored
    shutil.rmtree(tmp_path / "stage-2-pseudolabels")
    with pytest.raises(ConfigError, match="tumor_score"):
        run_stage2(tmp_path, PseudoLabelConfig(k_organ=3, k_tumor=1, score="disagreement",
                                               member_label_dirs=teams, fill_in_organs=False))
    assert not (tmp_path / "stage-2-pseudolabels" / "scores").exists()


def test_flare23_config_is_the_papers_member_setup(tmp_path):
    cfgs = Path(__file__).resolve().parents[1] / "configs"
    pc = load_config(cfgs / "flare23.yaml").pseudolabel
    assert (pc.score, pc.tumor_score, len(pc.member_label_dirs)) == ("disagreement", "entropy", 2)
    assert label_dir_groups(pc) == [("organ",), ("organ",)] and tumor_member_count(pc) == 1
    with pytest.raises(ValueError, match="flare22_winner is not a folder"):   # placeholders: exit 3
        check_members(pc)
    ok = load_config(cfgs / "flare23.yaml", [f"pseudolabel.member_label_dirs=[{tmp_path}, {tmp_path}]"])
    check_members(ok.pseudolabel)
    # documented way to run without the external folders
    check_members(load_config(cfgs / "flare23.yaml", ["pseudolabel.member_label_dirs=[]",
                                                      "pseudolabel.score=entropy"]).pseudolabel)
    assert "Zhou, Liu and\n# Zheng" in (cfgs / "default.yaml").read_text()
