"""Document sources: the embedded corpora, files in several formats, folders and globs.

:func:`iter_documents` turns a ``data.source`` string into a stream of ``(name, text)``
documents (:func:`read_documents`: the same as a list). Document boundaries matter: the
validation split holds out the end of every document, and the token stream puts
``<|endoftext|>`` between documents. This module finds the files and checks their formats
up front (an unknown extension fails before anything is read); :mod:`attnlab.data.formats`
reads each one.
"""

from __future__ import annotations

import glob as globlib
import gzip
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from attnlab.data.formats import detect_format, glob_extension, is_saved_dataset, read_file
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


_GLOB_CHARS = re.compile(r"[*?\[]")


def _glob_root(pattern: str) -> Path:
    """The folder above the first part of ``pattern`` holding a glob character."""
    parts = Path(pattern).parts
    literal = parts[: next(i for i, p in enumerate(parts) if _GLOB_CHARS.search(p))]
    return Path(*literal) if literal else Path(".")


def _glob_hint(folder: Path, limit: int = 10_000) -> str:
    """What to do when ``data.glob`` matched nothing: name the extensions the folder does hold."""
    counts: dict[str, int] = {}
    for i, p in enumerate(folder.rglob("*")):
        if i >= limit:
            break
        if p.is_file() and not p.name.startswith("."):
            ext = "".join(p.suffixes[-2:]) if p.suffix in (".gz", ".zst") else p.suffix
            counts[ext or "(no extension)"] = counts.get(ext or "(no extension)", 0) + 1
    if not counts:
        return "add text files or change data.glob"
    top = sorted(counts, key=lambda e: (-counts[e], e))[:3]
    held = ", ".join(f"{counts[e]} {e}" for e in top)
    example = next((e for e in top if e.startswith(".")), "")
    return f"it holds {held} files: change data.glob" + (f" (e.g. data.glob='**/*{example}')" if example else "")


def source_files(source: str, glob: str = "**/*.txt") -> list[tuple[Path, str, str]]:
    """The ``(path, name, format)`` of every file (or datasets folder) of a non-builtin source.

    Formats are checked here, before anything is read. ``format`` is ``"text"``,
    ``"json"``, ``"parquet"`` or ``"datasets"``; ``name`` is the file name for a single file,
    the path relative to the folder for a folder (or to the pattern's fixed part for a glob).

    Raises:
        AttnlabError: a missing path, a folder or glob matching nothing, an unknown extension.
    """
    path = Path(source).expanduser()
    if path.exists():
        if is_saved_dataset(path):
            return [(path, path.name, "datasets")]
        if path.is_dir():
            files = sorted(p for p in path.glob(glob) if p.is_file())
            if not files:
                raise AttnlabError(f"no files matching '{glob}' under directory '{source}'; {_glob_hint(path)}")
            ext = glob_extension(glob)
            return [(p, p.relative_to(path).as_posix(), detect_format(p, ext)) for p in files]
        return [(path, path.name, detect_format(path))]
    pattern = str(path)
    if _GLOB_CHARS.search(pattern):
        root = _glob_root(pattern)
        matches = sorted(Path(m) for m in globlib.glob(pattern, recursive=True))
        found = [m for m in matches if m.is_file() or is_saved_dataset(m)]
        if not found:
            raise AttnlabError(f"no files match the pattern '{source}'; check the path and the pattern")
        ext = glob_extension(pattern)
        return [
            (m, m.relative_to(root).as_posix(), "datasets" if m.is_dir() else detect_format(m, ext)) for m in found
        ]
    raise AttnlabError(
        f"data source '{source}' not found; give a text file, a directory of text files, "
        f"a .jsonl/.json/.parquet file, a datasets folder, a glob pattern, "
        f"or one of: {', '.join(BUILTIN_PREFIX + n for n in builtin_names())}"
    )


def iter_documents(source: str, glob: str = "**/*.txt", text_field: str = "text") -> Iterator[tuple[str, str]]:
    """Stream the documents of a source, one at a time, in a deterministic order.

    The files are found and their formats checked when this is called; they are read as
    the iterator is consumed, never the whole corpus at once.

    Args:
        source: ``"builtin:shakespeare"`` (one document per play) or ``"builtin:poetry"``;
            a file: text (``.txt .md .text .rst`` or no extension: one document, UTF-8 with
            bad bytes as U+FFFD), JSON Lines (``.jsonl .ndjson``, or ``.json`` as JSON Lines
            or one array of objects; optionally ``.gz`` / ``.zst``: one document per record),
            ``.parquet`` (one document per row); a ``datasets`` folder from ``save_to_disk``
            (one per row); a directory (every file matching ``glob``, sorted, each read by
            its extension); or a glob pattern such as ``"shards/*.parquet"``.
        glob: file pattern used when ``source`` is a directory. An extension it names
            literally (``"**/*.py"``) is read as text.
        text_field: the field (JSON) or column (Parquet, datasets) holding the text.

    Yields:
        ``(name, text)`` pairs; documents holding only whitespace are skipped. Names are
        ``shakespeare/<play>``, ``poetry/poetry``, the file name (single file) or path
        relative to the folder, then ``:LINE`` (JSON Lines, from 1) or ``:ROW`` (JSON
        arrays, Parquet, datasets; from 0) for records.

    Raises:
        AttnlabError: an unknown builtin, a missing path, an unknown extension (never read
            as text), invalid JSON or a record without a string ``text_field`` (naming the
            file and line or row), or no text at all.
    """
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        text = _builtin_text(name)
        parts = split_plays(text) if name == "shakespeare" else [(name, text)]
        return _nonempty(((f"{name}/{slug}", t) for slug, t in parts), source)
    files = source_files(source, glob)
    return _nonempty((doc for path, name, fmt in files for doc in read_file(path, name, fmt, text_field)), source)


def _nonempty(docs: Iterator[tuple[str, str]], source: str) -> Iterator[tuple[str, str]]:
    n = 0
    for name, text in docs:
        if text.strip():
            n += 1
            yield name, text
    if not n:
        raise AttnlabError(f"data source '{source}' holds no text (only empty documents); add some text")


def read_documents(source: str, glob: str = "**/*.txt", text_field: str = "text") -> list[tuple[str, str]]:
    """All the documents of a source as a list: ``list(iter_documents(source, glob, text_field))``.

    Raises:
        AttnlabError: as :func:`iter_documents`, including a source that holds no text.
    """
    return list(iter_documents(source, glob, text_field))
