"""English → Spanish Bible verses (King James ↔ Reina-Valera 1909), aligned by verse reference.

Both translations come as SWORD modules read with the ``diatheke`` command line tool;
the whole Bible is two calls (``-k Gen-Rev``, about five seconds each)::

    apt-get install diatheke sword-text-kjv sword-text-sparv   # or the modules engKJV2006eb / spaRV1909eb
    attnlab data prepare bible-en-es --out data/bible
    # {"source": "And God said, Let there be light: and there was light.",
    #  "target": "Y dijo Dios: Sea la luz: y fué la luz.", "ref": "Genesis 1:3"}

``diatheke -f plain`` prints one verse per line as ``Book C:V: text`` (psalm titles on a
line of their own, which are skipped). Strong's numbers (``<G5547>``), paragraph marks
(``¶``) and the all-caps first word of a chapter (``EN el principio``) are cleaned up;
verses present in both translations are paired and split by a seeded 80 / 10 / 10 shuffle
(about 31,000 pairs, ~25 words each).

``--path DIR`` reads ``DIR/engKJV2006eb.txt`` and ``DIR/spaRV1909eb.txt``, saved earlier with
``diatheke -b MODULE -f plain -k Gen-Rev > DIR/MODULE.txt``, instead of calling diatheke.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from attnlab.data.sources import write_splits
from attnlab.errors import AttnlabError

MODULES = ("engKJV2006eb", "spaRV1909eb")
"""SWORD modules of the source (English) and target (Spanish) text."""
RANGE = "Gen-Rev"
INSTALL = ("apt-get install diatheke with the SWORD modules engKJV2006eb and spaRV1909eb, or pass --path to a "
           "folder holding their `diatheke -f plain -k Gen-Rev` output as MODULE.txt")
_VERSE = re.compile(r"^\s*(?P<ref>\S.*? \d+:\d+): (?P<text>.*)$")
_STRONGS = re.compile(r"<[GH]\d+>")
_CAPS_START = re.compile(r"^([A-ZÁÉÍÓÚÑ]{2,})\b")
KEEP_CAPS = frozenset({"LORD", "GOD", "TEKEL", "PERES"})
"""All-caps words that open verses as written (everything else is a chapter's capitalised first word)."""


def parse_verses(text: str) -> dict[str, str]:
    """Verse reference → cleaned text, from ``diatheke -f plain`` output (other lines are skipped)."""
    verses = {}
    for line in text.splitlines():
        m = _VERSE.match(line)
        if m is None:
            continue
        words = _STRONGS.sub("", m["text"]).replace("¶", " ")
        words = " ".join(words.split()).replace(" ,", ",").replace(" .", ".")
        words = _CAPS_START.sub(lambda c: c[1] if c[1] in KEEP_CAPS else c[1].capitalize(), words)
        if words:
            verses[m["ref"]] = words
    return verses


def _diatheke(module: str) -> str:
    exe = shutil.which("diatheke")
    if exe is None:
        raise AttnlabError(f"the diatheke command is not installed; {INSTALL}")
    try:
        run = subprocess.run([exe, "-b", module, "-f", "plain", "-k", RANGE], capture_output=True, timeout=600,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AttnlabError(f"diatheke failed on module {module} ({type(e).__name__}); {INSTALL}") from None
    if run.returncode != 0:
        raise AttnlabError(f"diatheke failed on module {module} (exit {run.returncode}); {INSTALL}")
    return run.stdout.decode("utf-8", errors="replace")


def read_module(module: str, path: str | None = None) -> dict[str, str]:
    """The verses of one SWORD module, from ``path/MODULE.txt`` or by running diatheke.

    Raises:
        AttnlabError: neither the file nor diatheke with the module is available.
    """
    if path is None:
        where, text = f"diatheke -b {module}", _diatheke(module)
    else:
        f = Path(path).expanduser() / f"{module}.txt"
        if not f.is_file():
            raise AttnlabError(f"'{f}' not found; {INSTALL}")
        where, text = f"'{f}'", f.read_text(encoding="utf-8", errors="replace")
    verses = parse_verses(text)
    if not verses:
        raise AttnlabError(f"{where} gives no verses in diatheke's plain format ('Book C:V: text'); {INSTALL}")
    return verses


def verse_pairs(source: dict[str, str], target: dict[str, str]) -> list[dict[str, str]]:
    """``{"source", "target", "ref"}`` for every reference in both translations, in source order."""
    return [{"source": text, "target": target[ref], "ref": ref} for ref, text in source.items() if ref in target]


def prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of ``{"source": en, "target": es, "ref"}``.

    Args:
        out: output folder (created).
        path: a folder with ``engKJV2006eb.txt`` and ``spaRV1909eb.txt`` (diatheke's plain
            output); default: run diatheke.
        seed: seed of the shuffle that makes the 80 / 10 / 10 split.
        limit: keep at most this many verse pairs (``0``: all).

    Returns:
        split name → file.

    Raises:
        AttnlabError: the modules are missing, or ``limit`` leaves a split empty.
    """
    pairs = verse_pairs(*(read_module(m, path) for m in MODULES))
    return write_splits(pairs, out, seed=seed, limit=limit, what="verse pairs")
