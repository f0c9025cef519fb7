"""Flags every subcommand shares: -v/-q after the subcommand too, -i/-o aliases of the folder
options, help examples that name folders the pipeline writes (issue 27 item 4)."""
from __future__ import annotations

import argparse
import logging
import re

import pytest

from flareseg.cli import build_parser, main
from flareseg.work_layout import STAGE_NAMES


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(p: argparse.ArgumentParser) -> dict[str, str]:
    return {o: a.dest for a in p._actions for o in a.option_strings}


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_subcommand_takes_v_and_q_after_it(name):
    opts = _options(_subparsers()[name])
    assert opts.get("-v") == "verbose" and opts.get("-q") == "quiet"


#: subcommand -> (its input option's dest, its output option's dest): -i / -o name them
FOLDER_OPTIONS = {"predict": ("input", "output"), "import": ("images", "out"), "evaluate": ("pred", "out"),
                  "efficiency": ("inputs", "out"), "clean": ("labels", "out"), "phantoms": (None, "out"),
                  "report": ("work", "out"), "export-model": ("model", "output"), "statistics": ("image", "out")}


def test_i_and_o_alias_the_folder_options_of_every_subcommand():
    subs = _subparsers()
    assert set(FOLDER_OPTIONS) == set(subs)
    for name, (i, o) in FOLDER_OPTIONS.items():
        opts = _options(subs[name])
        assert opts.get("-o") == o, name
        assert opts.get("-i") == i, name


def test_short_and_long_names_parse_alike_with_v_after_the_subcommand():
    p = build_parser()
    a = p.parse_args(["evaluate", "-i", "P", "--gt", "G", "-o", "O", "-v"])
    b = p.parse_args(["-v", "evaluate", "--pred", "P", "--gt", "G", "--out", "O"])
    assert (str(a.pred), str(a.gt), str(a.out), a.verbose) == (str(b.pred), str(b.gt), str(b.out), b.verbose)
    assert a.verbose is True
    assert p.parse_args(["clean", "-i", "L", "-o", "O"]).labels == "L"


@pytest.mark.parametrize("where", ["before", "after"])
def test_q_silences_info(tmp_path, where):
    """-q before or after the subcommand: root level WARNING (flareseg's INFO lines, e.g. the
    predictor's dtype line, are not shown); predict's own -q (bars off) is set by either."""
    args = ["phantoms", "-o", str(tmp_path / "ph"), "--labeled", "1", "--tumor-only", "0", "--unlabeled", "0",
            "--validation", "0", "--size-xy", "48", "48", "--extent-z", "40", "40"]
    root = logging.getLogger()
    level = root.level
    try:
        assert main(["-q", *args] if where == "before" else [*args, "-q"]) == 0
        assert root.level == logging.WARNING
        assert not logging.getLogger("flareseg.inference.predictor").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(level)
    p = build_parser()
    assert p.parse_args(["-q", "predict", "-i", "a", "-o", "b", "-m", "c"]).quiet_all is True
    assert p.parse_args(["predict", "-i", "a", "-o", "b", "-m", "c", "-q"]).quiet is True


def _help_texts() -> dict[str, str]:
    return {n: sp.format_help() for n, sp in _subparsers().items()}


def test_help_examples_name_folders_the_pipeline_writes():
    seen = 0
    for name, text in _help_texts().items():
        for n, stage in re.findall(r"work/stage-(\d)-([\w-]+)", text):
            assert STAGE_NAMES.get(int(n)) == stage, (name, n, stage)
            seen += 1
        assert "work/stage-6-predict" not in text and "stage-5-coarse/model" not in text, name
    assert seen >= 3
    assert "work/stage-6-ship/model" in _help_texts()["predict"]


def test_top_level_help_does_not_call_predict_gpu_only(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "GPU only" not in out and "GPU or CPU" in out
