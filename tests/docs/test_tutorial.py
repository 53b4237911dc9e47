"""The tutorial runs: every chapter script executes, makes the figures its pages show, and
has an English and a Chinese page that include it literally."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial"
SCRIPTS = sorted((TUTORIAL / "code").glob("ch*.py"))
LANGS = ("en", "zh")
FIGURE = re.compile(r"!\[[^\]]*\]\(\.\./figures/([^)\s]+\.png)\)")


def pages_for(script: Path) -> dict[str, Path]:
    """The en/zh pages of a chapter: ``NN-*.md`` where ``chNN_*.py`` is the script."""
    number = re.match(r"ch(\d\d)_", script.name).group(1)
    found = {}
    for lang in LANGS:
        matches = sorted((TUTORIAL / lang).glob(f"{number}-*.md"))
        assert len(matches) == 1, f"expected one {lang} page {number}-*.md for {script.name}, found {matches}"
        found[lang] = matches[0]
    return found


def test_there_are_chapters():
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_chapter_runs_and_makes_its_figures(script, tmp_path):
    pages = pages_for(script)
    snippet = f'--8<-- "docs/tutorial/code/{script.name}"'
    wanted = set()
    for _lang, page in pages.items():
        text = page.read_text(encoding="utf-8")
        assert snippet in text, f"{page} does not include its script with {snippet}"
        figures = set(FIGURE.findall(text))
        assert figures, f"{page} shows no figure"
        wanted |= figures
    env = dict(os.environ, OMP_NUM_THREADS="2", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    made = {p.name for p in tmp_path.glob("*.png")}
    missing = sorted(wanted - made)
    assert not missing, f"{script.name} did not make the figures its pages show: {missing} (made {sorted(made)})"
    for name in made:
        assert name.startswith(script.name[:4] + "_"), f"{script.name} wrote {name}, not named {script.name[:4]}_*.png"
    committed = {p.name for p in (TUTORIAL / "figures").glob(script.name[:4] + "_*.png")}
    assert wanted <= committed, f"figures missing from docs/tutorial/figures: {sorted(wanted - committed)}"


@pytest.mark.parametrize("lang", LANGS)
def test_index_links_every_chapter_page(lang):
    index = (TUTORIAL / lang / "index.md").read_text(encoding="utf-8")
    for script in SCRIPTS:
        page = pages_for(script)[lang]
        assert f"({page.name})" in index, f"{lang}/index.md does not link {page.name}"
