"""Every benchmark figure quoted in the docs, mapped to the result file and command behind it.

The table lives in ``benchmarks/figures_table.py``; this module checks it and renders it.
A :class:`Figure` names the doc quoting a number, the quoted text (matched with whitespace
collapsed, so prose may wrap), the number as written, the result file under
``benchmarks/results/`` and where in it the number is: a path into the JSON (``rows[backend=
chunked,T=2048].peak_mib``; a number segment indexes a list), an arithmetic expression over such
paths in braces (``{a.ms} / {b.ms}``), or ``re:<regex>`` whose first group is the number in a
text file. The number matches when the recorded value, rounded to the quoted number of
decimals, equals it. A source outside the repository (``../shared/DESIGN.md``, a reference
measured elsewhere) is checked only where that file is present. An :class:`Unrecorded`
passage quotes figures measured by the command beside it whose output is not (yet) a file.
In the docs of ``COVERED_DOCS`` (the READMEs, the how-tos, the results pages) every number with a
unit of speed, time, size or loss, or a ratio, must lie inside a registered quote (or a phrase
listed as not a measurement): a new figure cannot be quoted without a row in the table.

    python benchmarks/figures.py --check   # exit 1 on a figure its source does not hold, or a stale FIGURES.md
    python benchmarks/figures.py --write   # regenerate benchmarks/FIGURES.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TABLE_MD = ROOT / "benchmarks" / "FIGURES.md"


@dataclass(frozen=True)
class Figure:
    """One number quoted in a doc and the recorded value it comes from."""

    doc: str
    quote: str
    figure: str
    source: str
    key: str
    command: str


@dataclass(frozen=True)
class Unrecorded:
    """A passage whose figures come from the command beside it, with no result file yet."""

    doc: str
    quote: str
    command: str


def row(doc: str, quote: str, source: str, command: str, *pairs: tuple[str, str]) -> list[Figure]:
    """Figures sharing one quoted text: ``pairs`` are (figure as written, key)."""
    return [Figure(doc, quote, fig, source, key, command) for fig, key in pairs]


def squash(text: str) -> str:
    """Whitespace collapsed to single spaces."""
    return re.sub(r"\s+", " ", text).strip()


def parse_number(text: str) -> tuple[float, int]:
    """The value and number of decimals of a figure as written (``5,189``, ``−0.03``, ``~1.4``)."""
    m = re.search(r"[-−]?\d[\d,]*(?:\.\d+)?", text)
    if m is None:
        raise ValueError(f"no number in figure {text!r}: write the figure as it appears in the doc")
    s = m.group(0).replace(",", "").replace("−", "-")
    decimals = len(s.split(".")[1]) if "." in s else 0
    return float(s), decimals


_SEGMENT = re.compile(r"([^.\[\]]+)(?:\[([^\]]*)\])?")


def lookup(data: Any, path: str) -> Any:
    """Follow ``a.b[k=v,k2=v2].c.0`` into loaded JSON; ``[k=v]`` picks the one list item matching."""
    node = data
    for seg in re.finditer(r"(?:[^.\[]+)(?:\[[^\]]*\])?", path):
        m = _SEGMENT.fullmatch(seg.group(0))
        if m is None:
            raise KeyError(f"bad path segment {seg.group(0)!r} in {path!r}")
        name, selector = m.group(1), m.group(2)
        if isinstance(node, list):
            node = node[int(name)]
        else:
            node = node[name]
        if selector is not None:
            want = dict(part.split("=", 1) for part in selector.split(","))
            hits = [item for item in node if all(str(item.get(k)) == v for k, v in want.items())]
            if len(hits) != 1:
                raise KeyError(f"{len(hits)} items match [{selector}] in {path!r}, need exactly one")
            node = hits[0]
    return node


def recorded_value(source_text: str, key: str) -> float:
    """The number ``key`` names in a result file's text (JSON path, expression, or ``re:``)."""
    if key.startswith("re:"):
        m = re.search(key[3:], source_text, re.MULTILINE)
        if m is None:
            raise KeyError(f"pattern {key[3:]!r} not found")
        return parse_number(m.group(1))[0]
    data = json.loads(source_text)
    if "{" not in key:
        return float(lookup(data, key))
    expr = re.sub(r"\{([^}]*)\}", lambda m: repr(float(lookup(data, m.group(1)))), key)
    return float(eval(expr, {"__builtins__": {}}, {"abs": abs, "max": max, "min": min}))  # noqa: S307


def matches(value: float, figure: str) -> bool:
    """Whether ``value`` rounds to the figure as written (its own number of decimals)."""
    want, decimals = parse_number(figure)
    return abs(value - want) <= 0.5 * 10**-decimals + 1e-9


def source_path(source: str) -> Path:
    """Where a source lives: under ``benchmarks/``, or beside the repository for ``../`` (in a git
    worktree, beside the main checkout when not beside the worktree)."""
    if not source.startswith("../"):
        return ROOT / "benchmarks" / source
    here = (ROOT / source).resolve()
    common = ROOT / ".git"
    if here.is_file() or not common.is_file():
        return here
    try:  # a worktree: ".git" names its git dir, whose "commondir" leads to the main one
        gitdir = Path(common.read_text(encoding="utf-8").split(":", 1)[1].strip())
        main_git = (gitdir / (gitdir / "commondir").read_text(encoding="utf-8").strip()).resolve()
    except (OSError, IndexError):
        return here
    beside_main = (main_git.parent / source).resolve()
    return beside_main if beside_main.is_file() else here


def check_figure(fig: Figure, docs: dict[str, str]) -> tuple[str, str]:
    """``(status, detail)``: status ``ok``, ``skipped`` (external file absent) or ``FAIL``."""
    if fig.figure not in fig.quote:
        return "FAIL", f"figure {fig.figure!r} is not part of its quote {fig.quote!r}"
    if squash(fig.quote) not in docs[fig.doc]:
        return "FAIL", f"{fig.doc} no longer says {fig.quote!r}: update the doc or benchmarks/figures_table.py"
    path = source_path(fig.source)
    if not path.is_file():
        if fig.source.startswith("../"):
            return "skipped", f"{fig.source} is outside the repository and not present here"
        return "FAIL", f"result file {fig.source} is missing: record it with `{fig.command}`"
    try:
        value = recorded_value(path.read_text(encoding="utf-8"), fig.key)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        return "FAIL", f"{fig.source}: {fig.key}: {exc}"
    if not matches(value, fig.figure):
        return "FAIL", f"{fig.doc} quotes {fig.figure} but {fig.source} {fig.key} records {value:g}"
    return "ok", f"{value:g}"


# A measured-looking number: a speed, time, size, loss unit or a ratio. Scanned in COVERED_DOCS only.
MEASURE = re.compile(
    r"[~≈]?\d[\d,]*(?:\.\d+)?\s?(?:k\s)?(?:tokens/s|req/s|ms/iter|ms\b|MiB|GiB|MB\b|bits/byte|nats/token|×|x\b|s\b|%)"
)


def uncovered(doc: str, text: str, quotes: list[str], ignore: list[str]) -> list[str]:
    """Measured-looking numbers in ``text`` (whitespace collapsed) outside every registered or ignored quote."""
    spans = []
    for quote in [*quotes, *ignore]:
        q = squash(quote)
        start = text.find(q)
        while start >= 0:
            spans.append((start, start + len(q)))
            start = text.find(q, start + 1)
    return [
        f"{doc} quotes {text[max(0, m.start() - 30):m.end()]!r}: register it in benchmarks/figures_table.py"
        for m in MEASURE.finditer(text)
        if not any(a <= m.start() < b for a, b in spans)
    ]


def load_docs(figures: list[Figure], passages: list[Unrecorded], covered: tuple[str, ...] = ()) -> dict[str, str]:
    """The text of each quoting or covered doc, whitespace collapsed."""
    names = sorted({f.doc for f in figures} | {p.doc for p in passages} | set(covered))
    return {name: squash((ROOT / name).read_text(encoding="utf-8")) for name in names}


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and no quoted link left live (its target is the doc's)."""
    return squash(text).replace("|", "\\|").replace("](", "]\\(")


def _code(text: str) -> str:
    """A table cell in a code span (a double-backtick one when the text holds a backtick)."""
    return f"`` {_cell(text)} ``" if "`" in text else f"`{_cell(text)}`"


def render(figures: list[Figure], passages: list[Unrecorded], results: list[tuple[str, str]]) -> str:
    """FIGURES.md: one table per result file, then external references, then unrecorded passages."""
    out = [
        "# Where every quoted benchmark figure comes from",
        "",
        "Generated by `python benchmarks/figures.py --write` from `benchmarks/figures_table.py`;",
        "`python benchmarks/figures.py --check` (run by `tests/bench/test_figures.py`) fails when a doc",
        "quotes a figure that its result file does not hold, or when this file is stale. Paths of result",
        "files are relative to `benchmarks/`; `key` is a path into the JSON (`[k=v]` picks a list item),",
        "an expression over such paths, or `re:` a pattern whose first group is the figure.",
        "Run the commands from the repository root with `.venv/bin/python` (or `PYTHONPATH=src`).",
        "",
        "## Figures checked against a result file",
        "",
    ]
    by_source: dict[str, list[int]] = {}
    for i, fig in enumerate(figures):
        by_source.setdefault(fig.source, []).append(i)
    for source, idx in by_source.items():
        external = source.startswith("../")
        note = " (a reference measured elsewhere, NOT ours; outside this repository)" if external else ""
        title = f"`{source}`{note}"
        out += [f"### {title}", ""]
        commands = sorted({figures[i].command for i in idx})
        out += [f"Produced by: {_code(c)}" if not external else f"Origin: {c}" for c in commands] + [""]
        out += ["| doc | quoted text | figure | key | recorded |", "|---|---|---|---|---|"]
        for i in idx:
            fig = figures[i]
            status, detail = results[i]
            shown = "see origin" if external else (detail if status == "ok" else status)
            cells = (f"`{fig.doc}`", _cell(fig.quote), _cell(fig.figure), _code(fig.key), _cell(shown))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += [
        "## Figures with no result file yet",
        "",
        "Measured by the command beside them in the doc (the passage says when and where); their",
        "output was not kept as a file. Re-run the command and record its output under",
        "`benchmarks/results/` to move a passage into the tables above.",
        "",
        "| doc | passage | command |",
        "|---|---|---|",
    ]
    out += [f"| `{p.doc}` | {_cell(p.quote)} | {_code(p.command)} |" for p in passages]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Check the figures (default) or rewrite FIGURES.md; exit 1 on a mismatch."""
    ap = argparse.ArgumentParser(description="Map every quoted benchmark figure to its recorded result file.")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="verify every figure and that FIGURES.md is current")
    mode.add_argument("--write", action="store_true", help="regenerate benchmarks/FIGURES.md")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from figures_table import COVERED_DOCS, FIGURES, NOT_MEASUREMENTS, UNRECORDED

    docs = load_docs(FIGURES, UNRECORDED, COVERED_DOCS)
    results = [check_figure(f, docs) for f in FIGURES]
    failures = [f"{f.doc}: {detail}" for f, (status, detail) in zip(FIGURES, results, strict=True) if status == "FAIL"]
    for doc in COVERED_DOCS:
        quotes = [f.quote for f in FIGURES if f.doc == doc] + [p.quote for p in UNRECORDED if p.doc == doc]
        failures += uncovered(doc, docs[doc], quotes, NOT_MEASUREMENTS.get(doc, []))
    failures += [f"{p.doc} no longer says {p.quote!r}" for p in UNRECORDED if squash(p.quote) not in docs[p.doc]]
    text = render(FIGURES, UNRECORDED, results)
    if args.write:
        TABLE_MD.write_text(text, encoding="utf-8")
    elif not TABLE_MD.is_file() or TABLE_MD.read_text(encoding="utf-8") != text:
        failures.append("benchmarks/FIGURES.md is stale: run `python benchmarks/figures.py --write`")
    skipped = sum(status == "skipped" for status, _ in results)
    failures = list(dict.fromkeys(failures))  # figures sharing a quote report a changed doc once
    for line in failures:
        print(f"FAIL {line}", file=sys.stderr)
    print(
        f"{len(FIGURES) - skipped} figures checked against their result files, {skipped} external "
        f"references skipped, {len(UNRECORDED)} passages without a result file, {len(failures)} failures"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
