"""Labelled task data from local files: JSON Lines, CSV/TSV, JSON lists and SQuAD JSON.

Every reader returns a list of plain dict records; tasks check the columns they need
with :func:`require_columns`, so a wrong file fails with one line naming the missing
column and the columns that are there::

    rows = read_records("reviews.csv")                # [{"text": ..., "label": ...}, ...]
    require_columns(rows, ["text", "label"], "reviews.csv", hint="set options.text_column")
    squad = read_squad("dev-v1.1.json")               # [{"id", "question", "context", "answers": {...}}]

Compressed files (``.gz``, ``.bz2``) are read transparently.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from attnlab.data.formats import open_text
from attnlab.errors import AttnlabError
from attnlab.io.durable import atomic_write_text

FORMATS = (".jsonl", ".json", ".csv", ".tsv")


def _open_text(path: Path) -> io.TextIOBase:
    return open_text(path, "utf-8-sig", errors="strict")


def _format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2")]
    fmt = suffixes[-1] if suffixes else ""
    if fmt not in FORMATS:
        raise AttnlabError(f"'{path}': unknown data format '{fmt or path.name}'; use one of {', '.join(FORMATS)}")
    return fmt


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a data file into a list of records (dicts).

    Args:
        path: ``.jsonl`` (one JSON object per line), ``.json`` (a list of objects, or a
            SQuAD file, flattened by :func:`read_squad`), ``.csv`` or ``.tsv`` with a header
            row; optionally ``.gz`` / ``.bz2`` compressed.

    Raises:
        AttnlabError: missing file, unknown format, malformed line or an empty file.
    """
    p = Path(path)
    if not p.is_file():
        raise AttnlabError(f"data file '{p}' not found; check the path (data.train / data.val / data.test)")
    fmt = _format(p)
    try:
        with _open_text(p) as f:
            if fmt == ".jsonl":
                rows = []
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise AttnlabError(f"'{p}' line {i} is not valid JSON ({e.msg}); fix or remove it") from None
            elif fmt == ".json":
                data = json.load(f)
                if isinstance(data, dict) and "data" in data:
                    return read_squad(p)
                rows = data if isinstance(data, list) else None
                if rows is None:
                    raise AttnlabError(f"'{p}' must hold a JSON list of records or a SQuAD object with 'data'")
            else:
                rows = list(csv.DictReader(f, delimiter="\t" if fmt == ".tsv" else ","))
    except (UnicodeDecodeError, OSError, EOFError, json.JSONDecodeError) as e:
        raise AttnlabError(f"'{p}' cannot be read as {fmt} ({type(e).__name__}: {str(e)[:80]})") from None
    if not rows:
        raise AttnlabError(f"'{p}' holds no records")
    if not all(isinstance(r, dict) for r in rows):
        raise AttnlabError(f"'{p}': every record must be a JSON object with named fields")
    return rows


def require_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str], source: str, hint: str = "") -> None:
    """Raise one clear error if any record lacks one of ``columns`` (or has it empty)."""
    have = list(rows[0].keys()) if rows else []
    for col in columns:
        for i, r in enumerate(rows):
            if col not in r or r[col] is None:
                raise AttnlabError(
                    f"'{source}' record {i} has no column '{col}' (columns: {', '.join(map(str, have))})"
                    + (f"; {hint}" if hint else "")
                )


def read_squad(path: str | Path) -> list[dict[str, Any]]:
    """Flatten a SQuAD v1.1/v2.0 JSON file into one record per question.

    Returns:
        Records ``{"id", "title", "context", "question", "answers": {"text": [...],
        "answer_start": [...]}}`` (the layout of Hugging Face ``datasets``' ``squad``).
        Unanswerable v2.0 questions have empty answer lists.

    Raises:
        AttnlabError: not SQuAD-shaped, or an answer that is not where ``answer_start`` says.
    """
    p = Path(path)
    try:
        with _open_text(p) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AttnlabError(f"'{p}' is not a readable SQuAD JSON file ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise AttnlabError(f"'{p}' is not in SQuAD format: expected an object with a 'data' list")
    rows = []
    for article in data["data"]:
        for para in article.get("paragraphs", []):
            context = para["context"]
            for qa in para.get("qas", []):
                texts = [a["text"] for a in qa.get("answers", [])]
                starts = [int(a["answer_start"]) for a in qa.get("answers", [])]
                for t, s in zip(texts, starts, strict=False):
                    if context[s:s + len(t)] != t:
                        raise AttnlabError(
                            f"'{p}' question {qa.get('id')}: answer {t!r} is not at answer_start={s} of its context"
                        )
                rows.append({"id": str(qa.get("id", len(rows))), "title": article.get("title", ""),
                             "context": context, "question": qa["question"],
                             "answers": {"text": texts, "answer_start": starts}})
    if not rows:
        raise AttnlabError(f"'{p}' holds no questions")
    return rows


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write records as JSON Lines (atomically: a temp file renamed into place)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return p


def split_records(
    rows: Sequence[dict[str, Any]], fractions: Sequence[float], seed: int = 0
) -> list[list[dict[str, Any]]]:
    """Shuffle (seeded) and cut ``rows`` into parts of the given fractions (the last takes the rest)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for i, frac in enumerate(fractions):
        end = len(order) if i == len(fractions) - 1 else start + round(frac * len(order))
        parts.append([rows[j] for j in order[start:end]])
        start = end
    return parts


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, *, side: str = "right", length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists into ``(ids (B, T), attention_mask (B, T))`` int64 tensors (mask 1 = real token)."""
    t = max([len(s) for s in seqs] + [length or 0, 1])
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        sl = slice(0, n) if side == "right" else slice(t - n, t)
        ids[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask
