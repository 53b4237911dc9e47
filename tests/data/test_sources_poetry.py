"""The chinese-poetry source on a small fake npm tarball in the real layout, the shipped
extract, and the poetry-tiny preset."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from attnlab import config, models
from attnlab.data.sources import SOURCES, poetry, prepare_source
from attnlab.data.tasks import read_records
from attnlab.errors import AttnlabError
from attnlab.eval.poetry import poem_shape

JUEJU_5 = ["床前看月光，疑是地上霜。", "舉頭望山月，低頭思故鄉。"]
JUEJU_7 = ["朝辭白帝彩雲間，千里江陵一日還。", "兩岸猿聲啼不住，輕舟已過萬重山。"]
LUSHI_5 = ["國破山河在，城春草木深。", "感時花濺淚，恨別鳥驚心。",
           "烽火連三月，家書抵萬金。", "白頭搔更短，渾欲不勝簪。"]

KEPT = [
    {"author": "李白", "title": "靜夜思", "paragraphs": JUEJU_5},
    {"author": "李白", "title": "早發白帝城 一", "paragraphs": JUEJU_7},  # title cut at the space
    {"author": "杜甫", "title": "春望", "paragraphs": LUSHI_5},
]
DROPPED = [
    {"author": "甲", "title": "重複", "paragraphs": JUEJU_5},  # same text again
    {"author": "乙", "title": "雜言", "paragraphs": ["床前看月光，疑是地上之霜。", "舉頭望山月，低頭思故鄉。"]},
    {"author": "丙", "title": "六句", "paragraphs": JUEJU_5 + ["烽火連三月，家書抵萬金。"]},
    {"author": "丁", "title": "缺字", "paragraphs": ["床前看□光，疑是地上霜。", "舉頭望山月，低頭思故鄉。"]},
    {"author": "戊", "title": "問句", "paragraphs": ["床前看月光，疑是地上霜？", "舉頭望山月，低頭思故鄉。"]},
    {"author": "己", "title": "一二三四五六七八九十一二三", "paragraphs": LUSHI_5[::-1]},  # title too long
    {"author": "庚", "title": "(無題)", "paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]},
]


def _member(tar: tarfile.TarFile, name: str, data: object) -> None:
    raw = json.dumps(data, ensure_ascii=False).encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tar.addfile(info, io.BytesIO(raw))


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    """chinese-poetry-2.0.1.tgz in npm's layout, with files that must be ignored beside the Tang poems."""
    p = tmp_path / poetry.TARBALL
    with tarfile.open(p, "w:gz") as tar:
        _member(tar, "package/dist/quantangshi/poet.tang.0.json", KEPT[:2] + DROPPED[:4])
        _member(tar, "package/dist/quantangshi/poet.tang.1000.json", KEPT[2:] + DROPPED[4:])
        _member(tar, "package/dist/quantangshi/poet.song.0.json", [{"author": "宋", "title": "宋詩",
                                                                     "paragraphs": ["白日依山盡，黃河入海流。"] * 2}])
        _member(tar, "package/dist/quantangshi/error/poet.tang.0.json", [{"author": "誤", "title": "誤",
                                                                           "paragraphs": JUEJU_7[::-1]}])
        _member(tar, "package/dist/quantangshi/authors.tang.json", [{"name": "李白", "desc": "..."}])
    return p


def test_regular_body_and_title():
    assert poetry.regular_body(JUEJU_5) == "".join(JUEJU_5)
    assert poetry.regular_body([" 國破山河在，城春草木深。\n"] + LUSHI_5[1:]) == "".join(LUSHI_5)
    assert poetry.regular_body(JUEJU_5 + ["多餘"]) is None  # text after the last mark
    assert poetry.regular_body(["國破山河在。城春草木深，"] + JUEJU_5) is None  # marks swapped
    assert poetry.regular_body(JUEJU_5[:1]) is None  # two lines
    assert poetry.clean_title("帝京篇十首 一") == "帝京篇十首"
    assert poetry.clean_title("奉和「聖製」") is None and poetry.clean_title("") is None
    assert poetry.format_poem("春望", "國破山河在，") == "《春望》國破山河在，"


def test_read_poems_from_tarball_and_folder(tarball, tmp_path):
    poems = poetry.read_poems(str(tarball))
    assert poems == [{"title": t, "author": k["author"], "text": "".join(k["paragraphs"])}
                     for t, k in zip(["靜夜思", "早發白帝城", "春望"], KEPT, strict=False)]
    folder = tmp_path / "node_modules" / "chinese-poetry"
    folder.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(folder, filter="data")
    assert poetry.read_poems(str(folder)) == poems


def test_default_locations_and_errors(tarball, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(poetry.read_poems()) == 3  # ./chinese-poetry-2.0.1.tgz
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(AttnlabError, match=r"npm pack chinese-poetry@2\.0\.1"):
        poetry.read_poems()
    (empty / "broken.tgz").write_bytes(b"not a tarball")
    with pytest.raises(AttnlabError, match="cannot be read as the chinese-poetry tarball"):
        poetry.read_poems(str(empty / "broken.tgz"))
    with pytest.raises(AttnlabError, match="holds no dist/quantangshi"):
        poetry.read_poems(str(empty))
    with pytest.raises(AttnlabError, match="not found"):
        poetry.read_poems(str(empty / "missing.tgz"))


def test_prepare_writes_text_and_splits(tmp_path):
    chars = "一二三四五六七八九十百千萬春夏秋冬東南西北金木水火土日月星辰風雲"
    many = [{"author": "某", "title": f"第{c}首",
             "paragraphs": [f"{c}山河草木，城春花{c}心。", "感時花濺淚，恨別鳥驚心。"]}
            for c in chars]
    p = tmp_path / "many.tgz"
    with tarfile.open(p, "w:gz") as tar:
        _member(tar, "package/dist/quantangshi/poet.tang.0.json", many)
    assert SOURCES["chinese-poetry"] == "attnlab.data.sources.poetry:prepare"
    files = prepare_source("chinese-poetry", tmp_path / "out", path=str(p), seed=1)
    rows = {s: read_records(f) for s, f in files.items()}
    assert [len(rows[s]) for s in ("train", "val", "test")] == [26, 3, 3]
    assert {r["text"] for rs in rows.values() for r in rs} == {"".join(m["paragraphs"]) for m in many}
    text = (tmp_path / "out" / "poems.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert sorted(lines) == sorted(f"《第{c}首》{c}山河草木，城春花{c}心。感時花濺淚，恨別鳥驚心。" for c in chars)
    assert all(poem_shape(ln)["regular"] for ln in lines)
    assert [ln[2] for ln in lines] != list(chars)  # shuffled, not in the package's order
    poetry.prepare(tmp_path / "again", path=str(p), seed=1)
    assert (tmp_path / "again" / "poems.txt").read_text(encoding="utf-8") == text  # seeded
    limited = poetry.prepare(tmp_path / "lim", path=str(p), seed=1, limit=20)
    assert sum(len(read_records(f)) for f in limited.values()) == 20
    assert len((tmp_path / "lim" / "poems.txt").read_text(encoding="utf-8").splitlines()) == 20


def test_write_text_gzip_budget(tmp_path):
    lines = [f"《題{i}》" + "".join(JUEJU_7) for i in range(2000)]
    out = tmp_path / "x.txt.gz"
    n = poetry.write_text(lines, out, max_gzip_bytes=3000)
    assert 0 < n < len(lines) and out.stat().st_size <= 3000
    assert gzip.decompress(out.read_bytes()).decode("utf-8").splitlines() == lines[:n]
    assert poetry.write_text(lines[:5], tmp_path / "y.txt") == 5


def test_packaged_extract_is_poem_shaped():
    lines = poetry.read_extract()
    assert len(lines) > 20000 and len(set(lines)) == len(lines)
    shapes = [poem_shape(ln) for ln in lines[::50]]
    assert all(s["regular"] for s in shapes)
    assert {s["lengths"][0] for s in shapes} == {5, 7} and {s["n_lines"] for s in shapes} == {4, 8}
    ref = Path(poetry.__file__).parents[1] / "corpus" / poetry.EXTRACT
    assert ref.stat().st_size <= 2_000_000


def test_preset_builds_a_model():
    cfg = config.load("poetry-tiny", ["model.vocab_size=3000"])
    assert cfg.data.source == "builtin:poetry" and cfg.data.tokenizer == "bpe:3000" and cfg.model.position == "rope"
    model = models.build(cfg.model)
    ids = torch.randint(0, 3000, (2, 16))
    assert model(ids).shape == (2, 16, 3000)
