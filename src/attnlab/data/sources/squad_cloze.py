"""A small extractive QA set in SQuAD v1.1 format, generated from the embedded Shakespeare plays.

Each context is a run of consecutive speeches from one play, one speech per line::

    Roderigo: Tush, never tell me; I take it much unkindly That thou, Iago, ...
    Iago: 'Sblood, but you will not hear me:-- If ever I did dream of such a matter, Abhor me.
    ...

and asks two kinds of question whose answer is a span of the context:

- **who speaks** — ``Who says "I take it much unkindly That"?`` → ``Roderigo`` (the name that
  opens the speech holding the quote; the model must find the quote, then the speaker before it);
- **cloze** — ``Which word follows "If ever I did dream"?`` → ``of`` ... in practice a word of
  three letters or more, taken from anywhere in a speech.

Quotes are :data:`QUOTE_WORDS` consecutive words that occur exactly once in their context,
so every question has one answer. Answers sit anywhere in the context, so position
alone does not give them away. Plays, not passages, are split 80 / 10 / 10 (seeded), so
validation and test questions come from plays the model never saw::

    attnlab data prepare squad-shakespeare --out data/squad-shakespeare
    # train.json / val.json / test.json:
    #   {"version": "1.1", "data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}

``--path`` takes other plays: a folder of ``*.txt`` files, one play each, at least three (speeches
are blocks that open with the speaker's name on a line of its own: ``HAMLET.``, ``Ham.``, ``THESEUS``).
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path
from typing import Any

from attnlab.data.corpus import read_documents
from attnlab.data.tasks import split_records
from attnlab.data.text_norm import normalize_answer
from attnlab.errors import AttnlabError

SOURCE = "builtin:shakespeare"
QUOTE_WORDS = 5
"""Words in a question's quote."""
TURNS = (3, 8)
"""Speeches per context (drawn uniformly from this range)."""
MAX_CONTEXT_WORDS = 260
"""A context stops growing at this many words (a longer single speech is cut); some contexts
then exceed 256 tokens, so long-context windowing is exercised."""
QUESTIONS = {"who": 2, "cloze": 2}
"""Questions of each kind asked per context (fewer when the context does not allow them)."""
FRACTIONS = (0.8, 0.1, 0.1)
_NAME = re.compile(r"^(?:[A-Z][A-Z'&-]*(?: [A-Z][A-Z'&-]*){0,3}\.?|[A-Z][a-z'&-]*(?: [A-Z][a-z'&-]*){0,2}\.)$")
_DIRECTION = re.compile(r"\[[^\]]*\]?")
_PUNCT = string.punctuation + "—‘’“”"


def speeches(play: str) -> list[tuple[str, str]]:
    """``(speaker, speech)`` of every speech of a play: blocks opening with a name line.

    Speaker names are title-cased when written in capitals (``LADY MACBETH.`` → ``Lady Macbeth``);
    stage directions in brackets are removed and the lines of a speech joined by spaces.
    """
    out = []
    for block in re.split(r"\n\s*\n", play):
        lines = [line.strip() for line in block.strip().split("\n")]
        if len(lines) < 2 or not _NAME.match(lines[0]) or lines[0].startswith(("ACT ", "SCENE ")):
            continue
        name = lines[0].rstrip(".")
        name = name.title() if name.isupper() else name
        text = " ".join(_DIRECTION.sub(" ", " ".join(lines[1:])).split())
        if len(text.split()) >= QUOTE_WORDS + 1:
            out.append((name, text))
    return out


def _contexts(turns: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, list[tuple[int, str, list[str]]]]]:
    """Group speeches into contexts: ``(text, [(offset of the speech's line, speaker, words), ...])``.

    A context takes the next speeches while it has fewer than its drawn number and stays
    within :data:`MAX_CONTEXT_WORDS` words (a first speech longer than that is cut).
    """
    out, i = [], 0
    while i < len(turns):
        want, parts, lines, n_words, offset = rng.randint(*TURNS), [], [], 0, 0
        while i < len(turns) and len(parts) < want:
            name, text = turns[i]
            words = text.split()
            if parts and n_words + len(words) > MAX_CONTEXT_WORDS:
                break
            words = words[:MAX_CONTEXT_WORDS]
            parts.append((offset, name, words))
            lines.append(f"{name}: {' '.join(words)}")
            offset += len(lines[-1]) + 1
            n_words += len(words)
            i += 1
        out.append(("\n".join(lines), parts))
    return out


def _unique_quote(context: str, words: list[str], start: int) -> str | None:
    quote = " ".join(words[start:start + QUOTE_WORDS])
    return quote if context.count(quote) == 1 else None


def _who(context: str, parts: list[tuple[int, str, list[str]]], rng: random.Random) -> dict[str, Any] | None:
    offset, name, words = rng.choice(parts)
    quote = _unique_quote(context, words, rng.randrange(len(words) - QUOTE_WORDS + 1))
    if quote is None:
        return None
    return {"question": f'Who says "{quote}"?', "answers": [{"text": name, "answer_start": offset}]}


def _cloze(context: str, parts: list[tuple[int, str, list[str]]], rng: random.Random) -> dict[str, Any] | None:
    offset, name, words = rng.choice(parts)
    j = rng.randrange(QUOTE_WORDS, len(words))
    answer = words[j].strip(_PUNCT)
    quote = _unique_quote(context, words, j - QUOTE_WORDS)
    if quote is None or len(answer) < 3 or not answer.replace("'", "").isalpha() or not normalize_answer(answer):
        return None
    start = context.index(answer, context.index(quote) + len(quote))
    return {"question": f'Which word follows "{quote}"?', "answers": [{"text": answer, "answer_start": start}]}


def play_questions(title: str, play: str, seed: int = 0) -> dict[str, Any]:
    """A SQuAD article (``{"title", "paragraphs"}``) of questions on one play."""
    rng = random.Random(f"{seed}-{title}")
    paragraphs = []
    for c, (context, parts) in enumerate(_contexts(speeches(play), rng)):
        qas = []
        for kind, n in QUESTIONS.items():
            asked: set[str] = set()
            for _ in range(4 * n):  # a few draws may fail (repeated quote, short answer)
                qa = (_who if kind == "who" else _cloze)(context, parts, rng)
                if qa is not None and qa["question"] not in asked:
                    asked.add(qa["question"])
                    qas.append({"id": f"{title}-{c}-{kind}{len(asked)}", **qa})
                if len(asked) == n:
                    break
        if qas:
            paragraphs.append({"context": context, "qas": qas})
    return {"title": title, "paragraphs": paragraphs}


def read_plays(path: str | None = None) -> list[tuple[str, str]]:
    """``(title, text)`` of every play: the embedded Shakespeare corpus, or the ``*.txt`` files of folder ``path``.

    Raises:
        AttnlabError: ``path`` is missing or holds no text.
    """
    return [(name.rsplit("/", 1)[-1], text) for name, text in read_documents(path or SOURCE)]


def _cap(articles: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first paragraphs of ``articles`` holding at most ``n`` questions (at least one paragraph)."""
    out, total = [], 0
    for art in articles:
        kept = []
        for para in art["paragraphs"]:
            if total and total + len(para["qas"]) > n:
                break
            kept.append(para)
            total += len(para["qas"])
        if kept:
            out.append({**art, "paragraphs": kept})
    return out


def _write(articles: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"version": "1.1", "data": articles}, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path


def prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0) -> dict[str, Path]:
    """Write ``train.json`` / ``val.json`` / ``test.json`` in SQuAD v1.1 format.

    Args:
        out: output folder (created).
        path: a folder of plays (one per ``.txt`` file) to use instead of the embedded Shakespeare corpus.
        seed: seeds the split of plays and the questions drawn.
        limit: about this many questions in all (``0``: all, about 8,000), 80 / 10 / 10 over the splits.

    Returns:
        split name → file.

    Raises:
        AttnlabError: fewer than three plays, or a split without questions.
    """
    plays = read_plays(path)
    if len(plays) < 3:
        raise AttnlabError(f"'{path or SOURCE}' holds {len(plays)} play(s); the split by play needs at least 3")
    articles = [play_questions(title, text, seed) for title, text in plays]
    articles = [a for a in articles if a["paragraphs"]]
    articles = split_records(articles, [1.0], seed=seed)[0]  # shuffled
    n_eval = max(1, round(FRACTIONS[1] * len(articles)))  # at least one play each for val and test
    splits = [articles[2 * n_eval:], articles[:n_eval], articles[n_eval:2 * n_eval]]
    if limit:
        splits = [_cap(s, max(1, round(limit * f))) for s, f in zip(splits, FRACTIONS, strict=False)]
    if not all(splits):
        raise AttnlabError(f"'{path or SOURCE}' leaves a split without questions (no speeches found?); "
                           "speeches must open with the speaker's name on a line of its own")
    out = Path(out)
    return {name: _write(s, out / f"{name}.json") for name, s in zip(("train", "val", "test"), splits, strict=False)}
