"""Handwritten digits (UCI optdigits test set as bundled with scikit-learn): 1,797 images of 8×8 pixels.

Each image is 64 integer intensities 0..16 (row by row) with its digit 0..9. The data
ship inside the scikit-learn package (``sklearn/datasets/data/digits.csv.gz``), so
nothing is downloaded::

    attnlab data prepare digits --out data/digits
    # train.jsonl / val.jsonl / test.jsonl: {"image": [0, 0, 5, 13, ...64 values], "label": 0}

The split is a seeded 70 / 15 / 15 shuffle; ``limit`` keeps that many shuffled examples.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from attnlab.data.tasks import split_records, write_jsonl
from attnlab.errors import AttnlabError

FRACTIONS = (0.7, 0.15, 0.15)
PIXELS = 64


def _load(path: str | None) -> np.ndarray:
    """(N, 65) int array: 64 pixels then the label (scikit-learn's ``digits.csv.gz`` layout)."""
    if path is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise AttnlabError("the digits source needs scikit-learn (it bundles the images): "
                               "pip install scikit-learn, or give --path to a digits.csv(.gz)") from None
        d = load_digits()
        return np.concatenate([d.data, d.target[:, None]], axis=1).astype(np.int64)
    p = Path(path)
    if not p.is_file():
        raise AttnlabError(f"digits file '{p}' not found; give scikit-learn's digits.csv.gz or leave --path out")
    try:
        with (gzip.open(p, "rt") if p.suffix == ".gz" else p.open()) as f:
            arr = np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, ValueError, EOFError) as e:
        raise AttnlabError(f"'{p}' is not a digits CSV (65 numbers a line): {str(e)[:80]}") from None
    if arr.shape[1] != PIXELS + 1:
        raise AttnlabError(f"'{p}' has {arr.shape[1]} columns; expected {PIXELS} pixels and a label (65)")
    return arr.astype(np.int64)


def prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of ``{"image": [64 ints 0..16], "label": int}``.

    Args:
        out: output folder (created).
        path: a ``digits.csv(.gz)`` file (64 pixels and the label per line) instead of
            scikit-learn's bundled copy.
        seed: seed of the shuffle that makes the split.
        limit: keep at most this many examples (``0``: all 1,797).

    Returns:
        split name → file.

    Raises:
        AttnlabError: scikit-learn missing (and no ``path``), an unreadable file, or too few examples.
    """
    data = _load(path)
    rows = [{"image": r[:PIXELS].tolist(), "label": int(r[PIXELS])} for r in data]
    train, val, test = split_records(rows, FRACTIONS, seed=seed)
    if limit:
        n = [round(limit * f) for f in FRACTIONS[:2]]
        train, val, test = train[:n[0]], val[:n[1]], test[:limit - n[0] - n[1]]
    if not (train and val and test):
        raise AttnlabError(f"limit={limit} leaves a split empty; use --limit 20 or more (or 0 for all)")
    out = Path(out)
    return {name: write_jsonl(split, out / f"{name}.jsonl")
            for name, split in (("train", train), ("val", val), ("test", test))}
