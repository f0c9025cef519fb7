"""Every `flareseg` subcommand explains itself; the pipeline entry point too."""
import pytest

from flareseg.cli import build_parser, main


def _subcommands():
    p = build_parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("import", "phantoms", "predict", "evaluate", "efficiency", "clean"):
        assert name in out
    assert "make demo" in out


@pytest.mark.parametrize("name", _subcommands())
def test_every_subcommand_help_names_inputs_and_outputs(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out.lower()
    assert len(out) > 400, name
    if name != "phantoms":   # the generator has no inputs, only a seed and sizes
        assert any(w in out for w in ("input", "--images", "--labels", "--pred", "-i ")), name
    assert any(w in out for w in ("output", "--out", "writes", "report")), name


def test_pipeline_help(capsys):
    from flareseg.pipeline.__main__ import main as pmain
    with pytest.raises(SystemExit):
        pmain(["--help"])
    out = capsys.readouterr().out
    for n in range(1, 7):
        assert f"  {n} " in out
    assert "--force" in out and "manifest.json" in out
