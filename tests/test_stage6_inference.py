"""Stage-6 measures the predictor it evaluates (issue 18): every inference key of the stage's
config reaches the `flareseg predict` processes of the efficiency table, whose outputs are the
predictions evaluated (the validation set is predicted once)."""
from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
import SimpleITK as sitk

from flareseg.config import Config, InferenceConfig, range_of, to_dict
from flareseg.inference.predictor import FastPredictor
from flareseg.io import Geometry, read_json, write_array, write_json
from tiny_model import tiny_plans, write_model_folder
from flareseg.pipeline.stage import StageContext
from flareseg.work_layout import stage_dir
from tiny import tiny_case

GEO = Geometry((80, 80, 40), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
BIAS = [0, 3, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]   # random weights + bias: organs predicted


def changed_value(name: str, default):
    """A valid value of InferenceConfig key ``name`` other than its default (every key, so a new
    key is covered without editing this test)."""
    tp = typing.get_type_hints(InferenceConfig)[name]
    if typing.get_origin(tp) is typing.Literal:
        others = [v for v in typing.get_args(tp) if v != default and v != "cuda"]  # no GPU needed
        return others[0]
    if isinstance(default, bool):
        return not default
    r = range_of(InferenceConfig, name)
    if isinstance(default, int):
        return default + 1 if r is None or r.hi is None or default + 1 <= r.hi else default - 1
    return (default + r.hi) / 2 if r is not None and r.hi is not None else default * 1.5


def every_key_changed() -> InferenceConfig:
    d = InferenceConfig()
    return dataclasses.replace(d, **{f.name: changed_value(f.name, getattr(d, f.name))
                                     for f in dataclasses.fields(d)})


def test_every_key_has_a_changed_value():
    d, c = InferenceConfig(), every_key_changed()
    assert [f.name for f in dataclasses.fields(d) if getattr(d, f.name) == getattr(c, f.name)] == []
    assert FastPredictor.__init__.__kwdefaults__ is not None   # only non-settings keywords have defaults
    assert not set(FastPredictor.__init__.__kwdefaults__) & {f.name for f in dataclasses.fields(d)}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Stage-6 on one tiny validation case with every inference key changed from its default."""
    from flareseg.pipeline.stage6_ship import run

    root = tmp_path_factory.mktemp("ship")
    model = write_model_folder(root / "model", plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=3,
                               class_bias=BIAS, mirror_axes=(2,))   # tta: one mirror
    img, lab = tiny_case(7, shape=(40, 80, 80))   # body in one corner: several windows per axis
    write_array(img, GEO, root / "imagesVal" / "v00_0000.nii.gz")
    write_array(lab, GEO, root / "labelsVal" / "v00.nii.gz")
    work = root / "work"
    write_json({"result": {"validation_images": str(root / "imagesVal"),
                           "validation_labels": str(root / "labelsVal")}}, stage_dir(work, 1) / "manifest.json")
    write_json({"result": {"model_dir": str(model), "training": {"checkpoint": "checkpoint_final.pth"}}},
               stage_dir(work, 5) / "manifest.json")
    cfg = Config(inference=every_key_changed())
    result = run(StageContext(6, cfg, work))
    return root, model, work, cfg, result


def test_efficiency_runs_use_every_configured_inference_key(shipped):
    root, model, work, cfg, result = shipped
    sd = stage_dir(work, 6)
    rep = read_json(sd / "efficiency" / "reports" / "v00.json")
    assert rep["inference"] == to_dict(cfg.inference)        # each key as configured, none defaulted
    assert rep["device"] == "cpu" and rep["cases"][0]["status"] == "ok"
    eff = read_json(sd / "efficiency" / "efficiency.json")
    assert "--config" in eff["summary"]["command"] and eff["summary"]["n_failed"] == 0
    # the processes' outputs are the predictions evaluated; nothing else predicted the set
    ship = read_json(sd / "ship_report.json")
    assert ship["prediction"]["cases"]["v00"]["output"] == str(sd / "predictions" / "v00.nii.gz")
    assert sorted(p.name for p in (sd / "predictions").iterdir()) == [".flareseg-written.jsonl", "v00.nii.gz"]
    assert not (sd / "efficiency" / "outputs").exists()
    assert (sd / "evaluation" / "per_case.csv").exists() and result["efficiency"]["n_cases"] == 1


def test_the_settings_took_effect(shipped):
    """The process's windows and labels are those of FastPredictor built from the stage's config,
    not the defaults' (which run other windows)."""
    root, model, work, cfg, result = shipped
    sd = stage_dir(work, 6)
    img = root / "imagesVal" / "v00_0000.nii.gz"
    ran = read_json(sd / "ship_report.json")["prediction"]["cases"]["v00"]["windows"]
    same = FastPredictor(model, cfg.inference).run(img)
    assert ran == same.stats["windows"]
    assert result["windows_total"] == ran["windows_total"] and result["windows_skipped"] == 0  # skip off
    assert ran != FastPredictor(model, device="cpu").run(img).stats["windows"]
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(sd / "predictions" / "v00.nii.gz")))
    assert np.mean(got == sitk.GetArrayFromImage(same.labels)) > 0.999


def test_stage6_ships_the_stock_loadable_export_it_measured(shipped):
    """Stage-6 writes the exported model folder (stock trainer name, export marker) and the
    efficiency processes ran that folder, not stage-5's training folder."""
    root, model, work, cfg, result = shipped
    sd = stage_dir(work, 6)
    assert result["model"] == str(sd / "model")
    assert (sd / "model" / "flareseg_export.json").is_file()
    assert read_json(sd / "model" / "flareseg_export.json")["model"] == str(model.resolve())
    from flareseg.nnunet.export import STOCK_TRAINER
    ckpt = next((sd / "model").glob("fold_*/checkpoint_*.pth"))
    from flareseg.nnunet.checkpoint import load_checkpoint
    assert load_checkpoint(ckpt)["trainer_name"] == STOCK_TRAINER
    report = read_json(sd / "efficiency" / "reports" / "v00.json")
    assert report["model"] == str(sd / "model")


def test_stage6_ships_the_settings_it_measured(shipped):
    """The shipped folder carries the stage's inference settings (every key), so predict, the API,
    the Docker entry point and the benches start from what stage-6 measured (issue 27)."""
    from flareseg.inference.model_settings import read_model_settings
    root, model, work, cfg, result = shipped
    assert read_model_settings(stage_dir(work, 6) / "model") == to_dict(cfg.inference)


def test_predict_with_the_shipped_model_and_no_config_uses_stage6_settings(shipped, tmp_path):
    """`flareseg predict -m <stage-6 model>` with no --config predicts with the settings stage-6
    measured (issue 27, must show): the run report's inference section is the stage's."""
    from flareseg.cli import main
    root, model, work, cfg, result = shipped
    out = tmp_path / "out"
    assert main(["predict", "-i", str(root / "imagesVal" / "v00_0000.nii.gz"), "-o", str(out / "v00.nii.gz"),
                 "-m", str(stage_dir(work, 6) / "model"), "-q"]) == 0
    assert read_json(out / "predict_report.json")["inference"] == to_dict(cfg.inference)
