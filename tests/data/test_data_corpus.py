"""Corpus reading: the builtin Shakespeare, single files, directories, and user errors."""

from __future__ import annotations

import re

import pytest

from attnlab.data.corpus import _builtin_text, builtin_names, read_documents
from attnlab.errors import AttnlabError


def test_builtin_names():
    assert builtin_names() == ["poetry", "shakespeare"]


def test_builtin_shakespeare_one_document_per_play():
    docs = read_documents("builtin:shakespeare")
    assert len(docs) == 14
    names = [n for n, _ in docs]
    assert names[0] == "shakespeare/hamlet-prince-of-denmark"
    assert "shakespeare/macbeth" in names and "shakespeare/as-you-like-it" in names
    assert len(set(names)) == 14
    for _, text in docs:
        assert text.count("by William Shakespeare") == 1
        assert text.split("\n")[2] == "by William Shakespeare"
        assert 90_000 < len(text) < 200_000
    # nothing is lost but blank lines between plays
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    assert squash("".join(t for _, t in docs)) == squash(_builtin_text("shakespeare"))


def test_single_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_bytes("caf\u00e9\n".encode() + b"bad \xff byte\n")
    assert read_documents(str(f)) == [("notes.txt", "café\nbad \ufffd byte\n")]


def test_directory_sorted_recursive_and_globbed(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "a.txt").write_text("ay\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("sea\n")
    (tmp_path / "skip.md").write_text("not text\n")
    (tmp_path / "empty.txt").write_text("  \n")
    assert read_documents(str(tmp_path)) == [("a.txt", "ay\n"), ("b.txt", "bee\n"), ("sub/c.txt", "sea\n")]
    assert read_documents(str(tmp_path), glob="*.md") == [("skip.md", "not text\n")]


def test_unknown_builtin():
    with pytest.raises(AttnlabError,
                       match=r"unknown builtin corpus 'builtin:shakespear' \(did you mean 'shakespeare'\?\)"):
        read_documents("builtin:shakespear")


def test_missing_path(tmp_path):
    with pytest.raises(AttnlabError, match="not found; give a text file") as e:
        read_documents(str(tmp_path / "missing"))
    assert "\n" not in str(e.value)


def test_directory_without_matching_files(tmp_path):
    (tmp_path / "x.md").write_text("hello")
    with pytest.raises(AttnlabError, match=r"no files matching '\*\*/\*.txt'.*change data.glob"):
        read_documents(str(tmp_path))


def test_empty_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("\n\n")
    with pytest.raises(AttnlabError, match="holds no text"):
        read_documents(str(tmp_path))


def test_builtin_poetry_is_one_document_of_poems():
    docs = read_documents("builtin:poetry")
    assert len(docs) == 1 and docs[0][0] == "poetry/poetry"
    lines = docs[0][1].splitlines()
    assert len(lines) == 22425 and all(line.startswith("《") for line in lines[:100])
