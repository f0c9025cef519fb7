"""Bad-input matrix for `flareseg predict --config FILE --set inference.KEY=VALUE` (issues 14, 18):
each row one distinct bad settings input, refused with exit 2 before any work (no output folder,
the model not loaded), one line naming the file or option, the key and the reason, no traceback,
inputs and model md5-identical."""
from __future__ import annotations

import pytest

from flareseg.cli import main
from tiny_model import tiny_plans, write_model_folder
from tests.bad_input import tiny_ct as _ct, check_contract, md5_tree, run_command


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("models") / "coarse",
                              plans=tiny_plans(spacing=(3.0, 3.0, 3.0)), seed=1)


def _config_row(name, text, names, reason):
    """A --config file with ``text``: the line names the file, the key and the reason."""
    def row(tmp):
        cfg = tmp / "settings.yaml"
        if text is not None:
            cfg.write_text(text)
        return ["--config", cfg], [str(cfg), *names], reason, [cfg] if text is not None else []
    row.__name__ = f"config_{name}"
    return row


def _set_row(name, item, names, reason):
    def row(tmp):
        return ["--set", item], ["--set", *names], reason, []
    row.__name__ = f"set_{name}"
    return row


ROWS = [
    _config_row("missing", None, [], "does not exist"),
    _config_row("not_yaml", "inference: [tta: true\n", [], "not valid YAML"),
    _config_row("unknown_key", "inference:\n  skip: false\n", ["inference.skip"], "unknown key"),
    _config_row("wrong_type", "inference:\n  tta: maybe\n", ["inference.tta"], "expects true/false"),
    _config_row("bad_choice", "inference:\n  image_resampling: cubic\n", ["inference.image_resampling"],
                "expects one of"),
    _config_row("out_of_range", "inference:\n  step_size: 1.5\n", ["inference.step_size"], "out of range"),
    _config_row("other_section_bad", "train_fine:\n  epoch: 3\n", ["train_fine.epoch"], "unknown key"),
    _set_row("unknown_key", "inference.grow=false", ["inference.grow"], "unknown key"),
    _set_row("out_of_range", "inference.batch_windows=-1", ["inference.batch_windows"], "out of range"),
    _set_row("wrong_type", "inference.skip_threshold=two", ["inference.skip_threshold"], "expects an integer"),
    _set_row("bad_choice", "inference.dtype=float8", ["inference.dtype"], "expects one of"),
    _set_row("not_inference", "train_fine.epochs=3", ["train_fine.epochs"], "only inference.KEY=VALUE"),
    _set_row("no_value", "inference.tta", ["inference.tta"], "only inference.KEY=VALUE"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.__name__ for r in ROWS])
def test_predict_bad_settings(row, tmp_path, model, capsys, caplog):
    argv, names, reason, files = row(tmp_path)
    inp = tmp_path / "in"
    inp.mkdir()
    _ct(inp / "a_0000.nii.gz")
    inputs = [inp, model, *files]
    before, everything = md5_tree(inputs), md5_tree([tmp_path])
    out = run_command(main, ["predict", "-i", inp, "-o", tmp_path / "out", "-m", model, *argv, "-q"],
                      capsys, caplog)
    check_contract(out, rc=2, names=names, reason=reason, inputs_before=before, inputs=inputs)
    assert md5_tree([tmp_path]) == everything and not (tmp_path / "out").exists()
