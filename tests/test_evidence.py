"""bench/evidence.py's statistics and its section of docs/evidence.md (issue 28 item 1)."""
from __future__ import annotations

import math

import pytest

from bench.evidence import CLAIMS, cache_key, claim_table, paired, run_id, t_interval, verdict, write_section


def test_t_interval_of_paired_differences():
    m, lo, hi = t_interval([0.1, 0.2, 0.3])
    # mean 0.2, sd 0.1, t(0.975, 2) = 4.3027: half width 4.3027 * 0.1 / sqrt(3)
    assert m == pytest.approx(0.2)
    assert (hi - lo) / 2 == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(t_interval([0.5])[1])


def test_verdict_reads_the_interval():
    assert "holds" in verdict(0.01, 0.2)
    assert "not shown" in verdict(-0.1, 0.2)
    assert "reversed" in verdict(-0.3, -0.1)


def test_differences_pair_arms_of_one_seed_only():
    c = CLAIMS["loss"]
    runs = {run_id("loss", "merge_max", 0): {"organ_dsc": 0.5}, run_id("loss", "naive", 0): {"organ_dsc": 0.2},
            run_id("loss", "merge_max", 1): {"organ_dsc": 0.6}, run_id("loss", "naive", 2): {"organ_dsc": 0.1}}
    vals, diffs = paired(runs, c, [0, 1, 2], "organ_dsc")
    assert vals == {"merge_max": [0.5], "naive": [0.2]} and diffs == [pytest.approx(0.3)]
    assert "organ mean DSC, paired difference merge_max − naive over 1 seeds: **+0.300**" in claim_table(runs, c, [0, 1, 2])
    assert cache_key("loss/naive/s0", "fine 12x25") != cache_key("loss/naive/s0", "fine 20x25")


def test_section_is_replaced_and_other_sections_stay(tmp_path):
    doc = tmp_path / "evidence.md"
    write_section(doc, "claims", "first")
    doc.write_text(doc.read_text() + "\n## Window skipping\n\nsomeone else's table\n")
    write_section(doc, "claims", "second")
    text = doc.read_text()
    assert "second" in text and "first" not in text
    assert text.count("<!-- evidence:claims begin -->") == 1
    assert "someone else's table" in text
    assert text.index("second") < text.index("Window skipping")


def test_section_goes_only_into_a_file_holding_it_unless_overwrite(tmp_path, capsys):
    """A document without the section's markers that no bench wrote (someone's notes) is refused;
    with overwrite the section is appended and the notes stay."""
    notes = tmp_path / "notes.md"
    notes.write_text("# My notes\n\nkeep me\n")
    with pytest.raises(SystemExit) as e:
        write_section(notes, "claims", "table")
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert notes.read_text() == "# My notes\n\nkeep me\n"
    write_section(notes, "claims", "table", overwrite=True)
    assert notes.read_text().startswith("# My notes\n\nkeep me\n") and "table" in notes.read_text()
