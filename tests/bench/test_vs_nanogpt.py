"""``benchmarks/vs_nanogpt.py`` at nanoGPT's CPU shape: the character data and the report (no nanoGPT needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import vs_nanogpt  # noqa: E402
from bench_common import char_corpus, windows  # noqa: E402


def test_char_corpus_has_exactly_the_asked_vocabulary_and_a_90_10_split():
    train, val = char_corpus(65)
    assert int(train.max()) == 64 and int(val.max()) <= 64 and int(train.min()) == 0
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 1e-4
    counts = torch.bincount(torch.cat([train, val]), minlength=65)[:-1]
    assert counts.diff().le(0).all()  # ids ranked by frequency in the whole text (bar the shared last one)


def test_windows_are_seeded_and_shifted_by_one():
    ids = torch.arange(1000)
    a, b = windows(ids, 3, 4, 16, seed=1), windows(ids, 3, 4, 16, seed=1)
    assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True))
    x, y = a[0]
    assert x.shape == y.shape == (4, 16) and torch.equal(y, x + 1)


def test_recorded_nanoshape_report_renders_every_model():
    res = json.loads((ROOT / "benchmarks/results/vs_nanogpt-cpu-nanoshape.json").read_text())
    md = vs_nanogpt.markdown(res)
    assert [r["name"] for r in res["rows"]] == ["attnlab float32", "attnlab bfloat16 (auto)", "nanoGPT"]
    assert len(res["vs_nanogpt"]) == 2 and "val loss" in md and "bfloat16 autocast (auto" in md
