"""Text sources: the embedded Shakespeare corpus, a text file, or a directory of files.

:func:`read_documents` turns a ``data.source`` string into a list of ``(name, text)``
documents. Document boundaries matter: the validation split holds out the end of
every document, and the token stream puts ``<|endoftext|>`` between documents.
"""

from __future__ import annotations

import gzip
import re
from importlib import resources
from pathlib import Path

from attnlab.errors import AttnlabError, did_you_mean

BUILTIN_PREFIX = "builtin:"
# name -> packaged file. Shakespeare is split into plays (see split_plays); the others are
# one document each (poetry: one Tang poem per line, see data/corpus/poetry/README.md).
_BUILTIN_FILES = {"shakespeare": "shakespeare.txt.gz", "poetry": "poetry/tang_5_7.txt.gz"}

# In the Shakespeare file each play opens with its title line, a blank line and
# "by William Shakespeare"; plays and scenes are both separated by runs of blank
# lines, so the title block is the reliable boundary.
_PLAY_START = re.compile(r"^(?=[^\n]+\n\s*\nby William Shakespeare\s*\n)", re.MULTILINE)


def builtin_names() -> list[str]:
    """Names of the corpora shipped with attnlab (use them as ``builtin:<name>``)."""
    return sorted(_BUILTIN_FILES)


def _builtin_text(name: str) -> str:
    if name not in _BUILTIN_FILES:
        choices = builtin_names()
        raise AttnlabError(
            f"unknown builtin corpus '{BUILTIN_PREFIX}{name}'{did_you_mean(name, choices)}; "
            f"available: {', '.join(BUILTIN_PREFIX + c for c in choices)}"
        )
    ref = resources.files("attnlab.data") / "corpus" / _BUILTIN_FILES[name]
    with resources.as_file(ref) as path:
        with gzip.open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def split_plays(text: str) -> list[tuple[str, str]]:
    """Split the Shakespeare file into ``(slug, text)`` documents, one per play."""
    starts = [m.start() for m in _PLAY_START.finditer(text)]
    if not starts or starts[0] != 0:
        starts = [0] + starts
    docs = []
    for a, b in zip(starts, starts[1:] + [len(text)], strict=False):
        play = text[a:b].strip("\n") + "\n"
        docs.append((_slug(play.split("\n", 1)[0]), play))
    return docs


def _read_file(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def read_documents(source: str, glob: str = "**/*.txt") -> list[tuple[str, str]]:
    """Read the documents of a text source.

    Args:
        source: ``"builtin:shakespeare"`` (one document per play), a text file (one
            document), or a directory (one document per file matching ``glob``, in
            sorted order). Files are decoded as UTF-8; bad bytes become U+FFFD.
        glob: file pattern used when ``source`` is a directory.

    Returns:
        ``(name, text)`` pairs in a deterministic order; documents holding only
        whitespace are dropped. Names are ``shakespeare/<play>`` for the builtin Shakespeare
        corpus, ``poetry/poetry`` for the builtin Tang poems,
        the file name for a file, and the path relative to ``source`` for a directory.

    Raises:
        AttnlabError: for an unknown builtin, a missing path, or no text at all.
    """
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        text = _builtin_text(name)
        parts = split_plays(text) if name == "shakespeare" else [(name, text)]
        docs = [(f"{name}/{slug}", t) for slug, t in parts]
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise AttnlabError(
                f"data source '{source}' not found; give a text file, a directory of text files, "
                f"or one of: {', '.join(BUILTIN_PREFIX + n for n in builtin_names())}"
            )
        if path.is_dir():
            files = sorted(p for p in path.glob(glob) if p.is_file())
            if not files:
                raise AttnlabError(
                    f"no files matching '{glob}' under directory '{source}'; add text files or change data.glob"
                )
            docs = [(p.relative_to(path).as_posix(), _read_file(p)) for p in files]
        else:
            docs = [(path.name, _read_file(path))]
    docs = [(n, t) for n, t in docs if t.strip()]
    if not docs:
        raise AttnlabError(f"data source '{source}' holds no text (empty files only); add some text")
    return docs
