"""How poem-shaped generated Chinese verse is: line lengths and punctuation.

A regular Tang poem (jueju or lüshi) has 4 or 8 lines, all of 5 or all of 7 characters,
the odd lines ending in ``，`` and the even ones in ``。``::

    poem_shape("《靜夜思》床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。")
    # {'n_lines': 4, 'lengths': [5, 5, 5, 5], 'frac_5_7': 1.0, 'punct_ok': 1.0,
    #  'uniform': True, 'complete': True, 'regular': True}
    shape_stats(samples)   # the same figures averaged over many samples

Only the first non-empty line of a text is measured (one poem per line, as in the
``poetry-tiny`` data), after a leading ``《title》``. A *verse line* is a run of
characters closed by one of ``，。？！；``; characters after the last mark (a sample
cut off by the token limit) form a last, unclosed line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

LINE_END = "，。？！；"
"""Marks that close a verse line."""
_TITLE = re.compile(r"^《[^》]*》")
_LINE = re.compile(f"([^{LINE_END}]+)([{LINE_END}]?)")


def poem_body(text: str) -> str:
    """The first non-empty line of ``text`` without its ``《title》`` and surrounding whitespace."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return _TITLE.sub("", first, count=1).strip()


def poem_shape(text: str) -> dict[str, Any]:
    """Line lengths and punctuation of the poem in ``text``.

    Args:
        text: a poem, e.g. a generated sample (see the module docstring for what is measured).

    Returns:
        ``n_lines``: verse lines; ``lengths``: characters of each line (marks excluded);
        ``frac_5_7``: share of lines of 5 or 7 characters; ``punct_ok``: share of lines
        ending in the expected mark (``，`` for the 1st, 3rd, ... line, ``。`` for the 2nd,
        4th, ...); ``uniform``: all lines of one length, 5 or 7; ``complete``: the last line
        is closed by ``。``; ``regular``: 4 or 8 lines, uniform, all marks as expected.
        The shares are ``0.0`` for a text with no lines.
    """
    lines = [(body, mark) for body, mark in _LINE.findall(poem_body(text)) if body.strip()]
    lengths = [len(body.strip()) for body, _ in lines]
    n = len(lines)
    expected_ok = [mark == "，。"[i % 2] for i, (_, mark) in enumerate(lines)]
    uniform = n > 0 and len(set(lengths)) == 1 and lengths[0] in (5, 7)
    punct_ok = sum(expected_ok) / n if n else 0.0
    return {
        "n_lines": n,
        "lengths": lengths,
        "frac_5_7": sum(x in (5, 7) for x in lengths) / n if n else 0.0,
        "punct_ok": punct_ok,
        "uniform": uniform,
        "complete": n > 0 and lines[-1][1] == "。",
        "regular": n in (4, 8) and uniform and all(expected_ok),
    }


def shape_stats(texts: Iterable[str]) -> dict[str, float]:
    """:func:`poem_shape` over many texts: mean shares and the fraction of uniform / regular poems.

    Returns:
        ``n`` (texts), ``lines`` (mean verse lines), ``frac_5_7`` and ``punct_ok`` (means over
        texts), ``uniform``, ``complete`` and ``regular`` (fractions of texts). All ``0.0`` for no texts.
    """
    shapes = [poem_shape(t) for t in texts]
    n = len(shapes)
    out: dict[str, float] = {"n": float(n)}
    for key in ("n_lines", "frac_5_7", "punct_ok", "uniform", "complete", "regular"):
        out["lines" if key == "n_lines" else key] = sum(float(s[key]) for s in shapes) / n if n else 0.0
    return out
