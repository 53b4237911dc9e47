"""A tiny synthetic sentiment task shared by the fine-tuning tests: filler words plus one
'good'/'great' (positive) or 'bad'/'awful' (negative), and a tiny model's overrides."""

from __future__ import annotations

import json
import random
from pathlib import Path

FILLER = ["the", "movie", "plot", "was", "really", "actors", "scenes", "story", "film", "and", "quite", "music"]
TINY = {"model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "model.d_ff": 64, "model.block_size": 32,
        "model.dropout": 0.0, "tokenizer": "bpe:300", "options.max_length": 16}


def sentiment_rows(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` labelled rows, a pure function of ``seed``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        words = rng.sample(FILLER, 5)
        words.insert(rng.randrange(6), rng.choice(["good", "great"] if label == "positive" else ["bad", "awful"]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_splits(folder: Path, sizes: tuple[int, int, int]) -> dict[str, Path]:
    """train / val / test JSON Lines files of ``sizes`` rows (seeds 0, 1, 2) in ``folder``."""
    out = {}
    for split, n, seed in zip(("train", "val", "test"), sizes, (0, 1, 2), strict=True):
        out[split] = folder / f"{split}.jsonl"
        out[split].write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(n, seed)))
    return out
