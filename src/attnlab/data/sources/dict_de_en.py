"""English → German sentence pairs from the example sentences of Debian's ``dict-de-en``.

The TU Chemnitz dictionary (as packaged for ``dictd``) holds, besides ~500,000 word
entries, about 20,000 entries whose headword is a whole English sentence with its German
translation ("The square root of 9 is 3." → "Die Quadratwurzel aus 9 ist 3."). Those
sentence entries become translation pairs; single words and noun phrases are left out::

    apt-get install dict-de-en                    # /usr/share/dictd/english-german.{dict.dz,index}
    attnlab data prepare de-en-dict --out data/de-en
    # train.jsonl / val.jsonl / test.jsonl:
    #   {"source": "He cringed at the thought.", "target": "Ihn schauderte bei dem Gedanken."}

The ``.dict.dz`` file is dictzip (readable as gzip); the ``.index`` beside it lists every
headword with the base64 offset and length of its entry. An entry is the English
headword (possibly wrapped over several lines), a note line (empty, or `` (context)``),
then the German text indented by three spaces (possibly wrapped), alternatives separated
by ``"; "``. The first German alternative is kept; grammar marks ``{n}``, subject tags
``[coll.]`` and abbreviations ``/s. u./`` are removed. Pairs with ``/`` alternatives
inside a sentence, or longer than :data:`MAX_WORDS` words, are dropped; an English
sentence seen twice keeps its first translation. The rest is split by a seeded
80 / 10 / 10 shuffle.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from attnlab.data.sources import write_splits
from attnlab.errors import AttnlabError

DICT_FILE = Path("/usr/share/dictd/english-german.dict.dz")
"""Where the Debian package puts the English → German dictionary."""
INSTALL = "apt-get install dict-de-en, or pass --path to english-german.dict.dz (with its .index beside it)"
MAX_WORDS = 25
"""Longest sentence kept (in whitespace-separated words, on either side)."""
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_SENTENCE = re.compile(r"^[A-Z\"'‘“].*[.?!]['’\"”]?$")
_MARKUP = re.compile(r"\{[^}]*\}|\[[^\]]*\]|/[^/\s][^/]*\./")


def _b64(s: str) -> int:
    """dictd's base64 number (most significant digit first)."""
    n = 0
    for c in s:
        if c not in _B64:
            raise ValueError(f"bad base64 digit {c!r}")
        n = n * 64 + _B64[c]
    return n


def _clean(text: str) -> str:
    return " ".join(_MARKUP.sub(" ", text).split()).replace(" ,", ",").replace(" .", ".")


def parse_entry(entry: str) -> tuple[str, str] | None:
    """``(english, german)`` of one dictionary entry, or ``None`` if it has no German part.

    Args:
        entry: the entry text: English line(s), a note line, then German line(s) indented by three spaces.
    """
    lines = entry.rstrip("\n").split("\n")
    first = next((i for i, line in enumerate(lines) if line.startswith("   ")), None)
    if first is None or first < 2:
        return None
    english = " ".join(line.strip() for line in lines[: first - 1])  # lines[first - 1] is the note line
    german = " ".join(line.strip() for line in lines[first:]).split("; ")[0]
    return _clean(english), _clean(german)


def read_entries(path: str | None = None) -> list[str]:
    """Every entry of the dictionary (once each, in index order).

    Args:
        path: the ``.dict.dz`` (or uncompressed ``.dict``) file, with its ``.index`` beside it;
            default: where ``dict-de-en`` installs it.

    Raises:
        AttnlabError: a missing or unreadable dictionary or index (the message says how to install it).
    """
    p = Path(path).expanduser() if path else DICT_FILE
    index = p.with_name(p.name.split(".dict")[0] + ".index")
    if not p.is_file():
        raise AttnlabError(f"the English-German dictionary '{p}' is not installed; {INSTALL}")
    if not index.is_file():
        raise AttnlabError(f"'{index}' (the dictionary's index) not found beside '{p}'; {INSTALL}")
    try:
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".dz" else p.read_bytes()
        rows = index.read_text(encoding="utf-8").splitlines()
        spans = []
        for i, row in enumerate(rows, 1):
            fields = row.split("\t")
            if len(fields) != 3:
                raise ValueError(f"index line {i} does not have 3 tab-separated fields")
            spans.append((_b64(fields[1]), _b64(fields[2])))
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        raise AttnlabError(f"'{p}' cannot be read as a dictd dictionary ({type(e).__name__}: {str(e)[:80]})") from None
    entries, seen = [], set()
    for span in spans:
        if span not in seen:
            seen.add(span)
            entries.append(data[span[0]: span[0] + span[1]].decode("utf-8", errors="replace"))
    return entries


def sentence_pairs(entries: list[str]) -> list[dict[str, str]]:
    """``{"source": english, "target": german}`` for every sentence entry (see the module docstring)."""
    pairs: dict[str, str] = {}
    for entry in entries:
        parsed = parse_entry(entry)
        if parsed is None:
            continue
        en, de = parsed
        if not (_SENTENCE.match(en) and de) or "/" in en + de or en in pairs:
            continue
        if max(len(en.split()), len(de.split())) <= MAX_WORDS:
            pairs[en] = de
    return [{"source": en, "target": de} for en, de in pairs.items()]


def prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of ``{"source": en, "target": de}``.

    Args:
        out: output folder (created).
        path: ``english-german.dict.dz`` (its ``.index`` beside it); default: the Debian package's.
        seed: seed of the shuffle that makes the 80 / 10 / 10 split.
        limit: keep at most this many pairs (``0``: all, about 19,000).

    Returns:
        split name → file.

    Raises:
        AttnlabError: the dictionary is missing or unreadable, or ``limit`` leaves a split empty.
    """
    pairs = sentence_pairs(read_entries(path))
    return write_splits(pairs, out, seed=seed, limit=limit, what="sentence pairs")
