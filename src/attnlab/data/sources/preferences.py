"""Preference pairs for chat models (DPO): the prompts of ``instruct``, a right answer against a wrong one.

The same tasks, splits and prompts as :mod:`attnlab.data.sources.instruct` (same seed: a test
prompt there is never a train prompt here), one pair a line::

    attnlab data prepare preferences --out data/preferences --tasks poem,reading
    # {"task": "sentiment-en", "lang": "en", "prompt": [{"role": "user", "content": "..."}],
    #  "chosen": "positive", "rejected": "negative"}

The rejected answer is, per task:

- sentiment: the other label (in the prompt's language);
- ``poem``: the poem broken (:func:`break_poem`): one line loses a character, repeats one, or
  is swapped for a line of the other length (5 ↔ 7 characters) from another poem of the split,
  so that :func:`attnlab.data.sources.poetry.regular_body` refuses it;
- translation, ``headline``, ``reading``: another example's answer from the same task and
  split (for ``reading`` one of the same question kind: a speaker for a speaker, a word for a word).

Every choice is seeded by the seed and the prompt; a rejected answer never equals the chosen one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnlab.data.sources.chat_tasks import Turn
from attnlab.data.sources.instruct import build, write_set
from attnlab.data.sources.poetry import LINE_CHARS, regular_body
from attnlab.errors import AttnlabError

_POEM_LINE = re.compile(r"([^，。]+)([，。])")


def break_poem(body: str, rng: random.Random, other_lines: Sequence[str] = ()) -> str:
    """``body`` made irregular in one line: a character dropped or doubled, or the line swapped.

    Args:
        body: a regular poem (:func:`poetry.regular_body`).
        rng: draws the way, the line and the character.
        other_lines: lines of the other length (7 characters for a 5-character poem and back);
            when given, swapping one in is a third way.
    """
    lines = _POEM_LINE.findall(body)
    width = len(lines[0][0])
    ways = ["drop", "double"] + (["mix"] if other_lines else [])
    way, i = rng.choice(ways), rng.randrange(len(lines))
    text, mark = lines[i]
    j = rng.randrange(width)
    if way == "drop":
        text = text[:j] + text[j + 1:]
    elif way == "double":
        text = text[: j + 1] + text[j:]
    else:
        text = rng.choice(other_lines)
    lines[i] = (text, mark)
    broken = "".join(a + b for a, b in lines)
    if regular_body([broken]) is not None or broken == body:
        raise AssertionError(f"broken poem {broken!r} is still regular")
    return broken


def _other_lines(turns: list[Turn]) -> dict[int, list[str]]:
    """Line width → the other width's lines of the split's poems (sorted, once each)."""
    by_width: dict[int, set[str]] = {w: set() for w in LINE_CHARS}
    for t in turns:
        for text, _ in _POEM_LINE.findall(t.answer):
            by_width.setdefault(len(text), set()).add(text)
    a, b = LINE_CHARS
    return {a: sorted(by_width[b]), b: sorted(by_width[a])}


def _distractor(chosen: str, pool: list[str], rng: random.Random) -> str:
    """Another answer of ``pool`` (sorted, unique, holding ``chosen``)."""
    k = rng.randrange(len(pool) - 1)
    return pool[k + (k >= pool.index(chosen))]


def rejected_answers(turns: list[Turn], seed: int) -> list[str]:
    """A wrong answer for each turn of one task's split (see the module docstring).

    Raises:
        AttnlabError: every example of the split has the same answer (no other to reject).
    """
    if not turns:
        return []
    task = turns[0].task
    lines = _other_lines(turns) if task == "poem" else {}
    pools: dict[str, list[str]] = {}
    for kind in {t.kind for t in turns}:
        pools[kind] = sorted({t.answer for t in turns if t.kind == kind})
    every = sorted({t.answer for t in turns})
    out = []
    for t in turns:
        rng = random.Random(f"{seed}\x1f{t.task}\x1f{t.prompt}\x1frejected")
        if t.labels is not None:
            wrong = t.labels[1 - t.labels.index(t.answer)]
        elif task == "poem":
            wrong = break_poem(t.answer, rng, lines.get(len(_POEM_LINE.match(t.answer)[1]), []))
        else:
            pool = pools[t.kind] if len(pools[t.kind]) > 1 else every
            if len(pool) < 2:
                raise AttnlabError(f"task {task}: every example of a split has the answer {t.answer!r}, so there is "
                                   "no wrong answer to pair it with; use more raw data or a larger --limit")
            wrong = _distractor(t.answer, pool, rng)
        if wrong == t.answer:
            raise AssertionError(f"rejected equals chosen for {t.prompt!r}")
        out.append(wrong)
    return out


def preference(item: tuple[Turn, str]) -> dict[str, Any]:
    """The JSON record of one preference pair."""
    turn, rejected = item
    return {"task": turn.task, "lang": turn.lang, "prompt": [{"role": "user", "content": turn.prompt}],
            "chosen": turn.answer, "rejected": rejected}


def prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0,
            tasks: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of preference pairs and ``manifest.json``.

    Args:
        out: output folder (created).
        path: ``TASK=PATH`` pairs, comma-separated, for tasks whose raw data is not where its package puts it.
        seed: seeds the splits, the prompts, the wrong answers and the shuffles (as for ``instruct``).
        limit: at most this many pairs per task (``0``: all).
        tasks: the task names to build (``None``: all).

    Returns:
        split name → file.

    Raises:
        AttnlabError: see :func:`attnlab.data.sources.instruct.build`, or a split with a single answer.
    """
    built = build(path=path, seed=seed, limit=limit, tasks=tasks)
    pairs = {name: [list(zip(split, rejected_answers(split, seed), strict=True)) for split in splits]
             for name, splits in built.items()}
    return write_set("preferences", Path(out), pairs, preference, path=path, seed=seed, limit=limit, tasks=tasks)
