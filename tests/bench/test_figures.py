"""Every benchmark figure quoted in the docs is in the result file it cites (``benchmarks/figures.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import figures  # noqa: E402
from figures import Figure, check_figure, lookup, matches, parse_number, squash  # noqa: E402

GEN = "results/generate-cpu.json"


def test_every_quoted_figure_is_in_its_result_file_and_figures_md_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "figures.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failures" in proc.stdout


def test_the_table_covers_the_readmes_and_every_result_file_it_cites_exists():
    from figures_table import FIGURES, UNRECORDED

    docs = {f.doc for f in FIGURES} | {p.doc for p in UNRECORDED}
    assert {"README.md", "benchmarks/README.md"} <= docs
    for fig in FIGURES:
        if not fig.source.startswith("../"):
            assert figures.source_path(fig.source).is_file(), fig.source
        assert fig.command.strip(), fig


@pytest.mark.parametrize("text, value, decimals", [("5,189", 5189.0, 0), ("−0.03", -0.03, 2), ("(12.4)", 12.4, 1),
                                                    ("~1,180", 1180.0, 0), ("0.05", 0.05, 2)])
def test_parse_number(text, value, decimals):
    assert parse_number(text) == (value, decimals)


def test_matches_rounds_to_the_quoted_decimals():
    assert matches(12.046, "12.0") and not matches(12.046, "12.1")
    assert matches(0.049, "0.05") and matches(-0.0311, "−0.03") and matches(394.65, "394.7")
    assert not matches(9.7, "24")


def test_lookup_selects_one_list_item_and_indexes_lists():
    data = {"rows": [{"b": "x", "T": 1, "v": [1, 2]}, {"b": "y", "T": 1, "v": [3, 4]}], "d": {"a->b": 5}}
    assert lookup(data, "rows[b=y,T=1].v.1") == 4
    assert lookup(data, "d.a->b") == 5
    with pytest.raises(KeyError, match="2 items match"):
        lookup(data, "rows[T=1].v")


def _docs(text: str) -> dict[str, str]:
    return {"README.md": squash(text)}


def test_a_figure_its_result_file_does_not_hold_fails():
    """The README once said ~24–25 tokens/s at batch 1 while generate-cpu.json records 9.7."""
    key = "results[batch=1,key=eager].tokens_per_s"
    wrong = Figure("README.md", "(~24–25 tokens/s at batch 1", "24", GEN, key, "python benchmarks/generate.py")
    status, detail = check_figure(wrong, _docs("within noise (~24–25 tokens/s at batch 1, ..."))
    assert status == "FAIL" and "records 9.7" in detail
    right = Figure("README.md", "(9.7–10.3 tokens/s", "9.7", GEN, key, "python benchmarks/generate.py")
    assert check_figure(right, _docs("noise (9.7–10.3\n tokens/s at batch 1")) == ("ok", "9.7")


def test_a_changed_doc_a_missing_file_or_key_fails():
    fig = Figure("README.md", "(9.7–10.3 tokens/s", "9.7", GEN, "results[batch=1,key=eager].tokens_per_s", "cmd")
    assert check_figure(fig, _docs("(9.8–10.3 tokens/s"))[0] == "FAIL"
    gone = Figure("README.md", "9.7 tokens/s", "9.7", "results/no-such-file.json", "x", "cmd")
    assert "missing" in check_figure(gone, _docs("9.7 tokens/s"))[1]
    bad_key = Figure("README.md", "9.7 tokens/s", "9.7", GEN, "results[batch=3].tokens_per_s", "cmd")
    assert check_figure(bad_key, _docs("9.7 tokens/s"))[0] == "FAIL"


def test_an_external_reference_absent_here_is_skipped_not_failed():
    ref = Figure("README.md", "36.4 ms/iter", "36.4", "../no-such-folder/DESIGN.md", r"re:([\d.]+) ms/iter", "ref")
    assert check_figure(ref, _docs("36.4 ms/iter"))[0] == "skipped"


def test_an_unregistered_measurement_in_a_covered_doc_is_reported():
    text = squash("The step ran at 12.5 tokens/s on\n 2 cores, batch 16 × 128.")
    assert len(figures.uncovered("README.md", text, [], [])) == 2
    assert figures.uncovered("README.md", text, ["ran at 12.5 tokens/s"], ["batch 16 × 128"]) == []
