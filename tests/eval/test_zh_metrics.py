"""Chinese-aware BLEU and ROUGE: identical Chinese strings score 100, partial overlap in between,
English exactly as sacrebleu / rouge-score score it by default, Japanese and Korean not taken for
Chinese, the instruct suite on a Chinese target, and a tiny English→Chinese translate run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from attnlab.errors import ConfigError
from attnlab.eval.generation import bleu, chrf, rouge
from attnlab.eval.lang import RougeTokenizer, detect_lang, tokenization

pytest.importorskip("sacrebleu", reason="sacrebleu not installed: pip install 'attnlab[eval]'")
pytest.importorskip("rouge_score", reason="rouge-score not installed: pip install 'attnlab[eval]'")

ZH = ["我们明天去北京看长城。", "这本书非常有意思，我已经读了两遍。"]
ZH_PARTIAL = ["我们明天去上海看大海。", "这本书很有意思，我读了一遍。"]
EN_HYPS = ["the cat sat on a mat today", "a quick brown fox jumped over dogs"]
EN_REFS = ["the cat sat on the mat", "the quick brown fox jumps over the lazy dog"]
JA = ["東京は日本の首都です。", "私は毎朝コーヒーを飲みます。"]
KO = ["나는 매일 아침 학교에 갑니다", "이 책은 정말 재미있어요"]


def test_identical_chinese_scores_100_bleu_and_rouge_1():
    b, r = bleu(ZH, ZH), rouge(ZH, ZH)
    assert b["bleu"] == pytest.approx(100.0) and b["bleu_tokenize"] == "zh" and "tok:zh" in b["signature"]
    # ROUGE is on attnlab's [0, 100] scale: 100 is an F-measure of 1.0
    assert r == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rouge_tokenize": "char"})
    assert chrf(ZH, ZH)["chrf"] == pytest.approx(100.0)
    # what the default tokenizers made of it (the bug): one "word" per sentence for BLEU, nothing for ROUGE
    assert bleu(ZH, ZH, lang="en")["bleu"] == 0.0 and rouge(ZH, ZH, lang="en")["rougeL"] == 0.0


def test_partial_chinese_overlap_is_strictly_between():
    b, r = bleu(ZH_PARTIAL, ZH)["bleu"], rouge(ZH_PARTIAL, ZH)
    assert 0 < b < 100 and all(0 < r[t] < 100 for t in ("rouge1", "rouge2", "rougeL"))
    # one sentence by hand: 我们明天去上海看大海 vs 我们明天去北京看长城 share 我们明天去 + 看 (6 of 10 characters
    # each way; the full stops are punctuation, dropped): ROUGE-1 = ROUGE-L = 60, bigrams 我们 们明 明天 天去: 4/9
    one = rouge(ZH_PARTIAL[:1], ZH[:1])
    assert one == pytest.approx({"rouge1": 60.0, "rouge2": 400 / 9, "rougeL": 60.0, "rouge_tokenize": "char"})
    # further from the reference, lower scores
    worse = ["我们后天去上海看大海。", "那部电影很没意思，我看了一遍。"]
    assert bleu(worse, ZH)["bleu"] < b and rouge(worse, ZH)["rougeL"] < r["rougeL"]
    # several references: the matching one counts
    assert rouge(ZH[:1], [[ZH_PARTIAL[0], ZH[0]]])["rougeL"] == pytest.approx(100.0)


def test_english_scores_exactly_as_before():
    import sacrebleu
    from rouge_score import rouge_scorer

    got = bleu(EN_HYPS, EN_REFS)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(EN_HYPS, [EN_REFS]).score) and 0 < got["bleu"] < 100
    assert got["bleu_tokenize"] == "13a" and "tok:13a" in got["signature"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    per = [scorer.score(r, h) for h, r in zip(EN_HYPS, EN_REFS, strict=True)]
    want = {t: 100 * sum(s[t].fmeasure for s in per) / len(per) for t in ("rouge1", "rouge2", "rougeL")}
    assert rouge(EN_HYPS, EN_REFS) == pytest.approx({**want, "rouge_tokenize": "default"})
    assert rouge(EN_HYPS, EN_REFS, lang="en") == rouge(EN_HYPS, EN_REFS)
    # an English text quoting a Chinese name stays English
    quoted = ["the poet Li Bai (李白) wrote it"]
    assert rouge(quoted, quoted)["rouge_tokenize"] == "default"


def test_detect_lang():
    assert detect_lang(ZH) == "zh" and detect_lang("我用Python写代码，速度很快") == "zh"
    assert detect_lang("東京大学") == "zh"  # kanji only: nothing tells it from Chinese
    assert detect_lang(JA) == "ja" and detect_lang(KO) == "ko"
    assert detect_lang("나는 韓國 사람입니다") == "ko"  # hanja inside Korean
    for text in (EN_REFS, "Das Haus ist groß.", "The poet Li Bai (李白) wrote this", "", "123 ！!", []):
        assert detect_lang(text) is None
    assert tokenization(ZH).as_dict() == {"lang": "zh", "bleu_tokenize": "zh", "rouge_tokenize": "char"}
    assert tokenization(ZH, "zh-TW").lang == "zh" and tokenization(ZH, "de").lang is None
    assert tokenization(EN_REFS, "zh").bleu_tokenize == "zh"  # an explicit lang wins over detection


def test_japanese_and_korean_are_not_scored_as_chinese():
    ja_b, ja_r = bleu(JA, JA), rouge(JA, JA)
    assert ja_b["bleu_tokenize"] == "char" and ja_r["rouge_tokenize"] == "char"
    assert ja_b["bleu"] == pytest.approx(100.0) and ja_r["rougeL"] == pytest.approx(100.0)
    assert 0 < rouge(["東京は日本の首都でした。"], JA[:1])["rougeL"] < 100
    ko_b, ko_r = bleu(KO, KO), rouge(KO, KO)
    assert ko_b["bleu_tokenize"] == "13a" and ko_r["rouge_tokenize"] == "words"
    assert ko_b["bleu"] == pytest.approx(100.0) and ko_r["rougeL"] == pytest.approx(100.0)
    # Korean words (not characters) are the units: one word of five differs -> 4/5
    assert rouge(["나는 매일 저녁 학교에 갑니다"], KO[:1])["rouge1"] == pytest.approx(80.0)
    assert RougeTokenizer("words").tokenize("나는 Python을 좋아한다, 韓國") == [
        "나는", "python", "을", "좋아한다", "韓", "國"]


def test_english_words_inside_chinese_are_tokenized_and_stemmed_as_rouge_score_does():
    tok = RougeTokenizer("char", use_stemmer=True)
    assert tok.tokenize("我用Running Pythons写代码！") == ["我", "用", "run", "python", "写", "代", "码"]
    assert RougeTokenizer("char").tokenize("我用Running Pythons") == ["我", "用", "running", "pythons"]
    r = rouge(["他喜欢running"], ["他喜欢run"], use_stemmer=True)
    assert r["rouge1"] == pytest.approx(100.0) and rouge(["他喜欢running"], ["他喜欢run"])["rouge1"] < 100


def test_bad_lang_and_tokenize_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="lang 'chinese' is not a language code; use auto"):
        bleu(ZH, ZH, lang="chinese")
    with pytest.raises(ValueError, match="give tokenize .* or lang .*, not both"):
        bleu(ZH, ZH, tokenize="13a", lang="zh")
    with pytest.raises(ValueError, match="give tokenize .* or lang .*, not both"):
        rouge(ZH, ZH, tokenize="char", lang="zh")
    with pytest.raises(ValueError, match="unknown tokenize 'chars'; choose from default, char, words"):
        rouge(ZH, ZH, tokenize="chars")
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        bleu(ZH, ZH[:1])
    assert bleu(ZH, ZH, tokenize="13a")["bleu_tokenize"] == "13a"  # an explicit tokenizer is used as given


# ---------------------------------------------------------------------------------------------- instruct suite


def test_instruct_suite_scores_chinese_targets_with_the_same_path():
    from attnlab.data.chat_data import Conversation
    from attnlab.eval.instruct import run_suite, score_task

    def rec(task: str, user: str, answer: str) -> Conversation:
        return Conversation([{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                            "t.jsonl line 1", {"task": task})

    records = [rec("translate-en-zh", f"Translate to Chinese: {e}", z) for e, z in zip(EN_REFS, ZH, strict=True)]
    records += [rec("headline", "Write a headline: ...", "北京今天下大雪"),
                rec("translate-en-de", "Translate to German: The house is big.", "Das Haus ist groß.")]
    perfect = score_task("translate-en-zh", ZH, ZH, records[:2])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert 0 < score_task("translate-en-zh", ZH_PARTIAL, ZH, records[:2])["bleu"] < 100
    replies = {r.messages[0]["content"]: r.messages[1]["content"] for r in records}
    res = run_suite(records, lambda messages: replies[messages[-1]["content"]], progress=False)
    assert res["tasks"]["headline"]["rougeL"] == pytest.approx(100.0)
    assert res["headline"]["translate-en-zh"] == pytest.approx(100.0) == res["tasks"]["translate-en-zh"]["bleu"]
    assert res["tokenization"] == {"headline": {"lang": "zh", "rouge_tokenize": "char"},
                                   "translate-en-de": {"lang": None, "bleu_tokenize": "13a"},
                                   "translate-en-zh": {"lang": "zh", "bleu_tokenize": "zh"}}


# ---------------------------------------------------------------------------------------------- translate recipe

COLORS = {"red": "红", "blue": "蓝", "green": "绿", "gold": "金", "pink": "粉", "gray": "灰", "white": "白",
          "black": "黑"}


def _pairs(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ws = rng.choices(list(COLORS), k=rng.randint(3, 5))
        rows.append({"source": " ".join(ws), "target": "".join(COLORS[w] for w in ws) + "。"})
    return rows


def _recipe(tmp_path: Path, task: str = "translate", **extra):
    from attnlab.finetune import load_finetune_config

    files = {}
    for split, n, seed in (("train", 300, 0), ("val", 24, 1), ("test", 24, 2)):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _pairs(n, seed)),
                                encoding="utf-8")
    over = {"data.train": files["train"], "data.val": files["val"], "data.test": files["test"],
            "tokenizer": "bpe:300", "init": "rnn", "train.out_dir": tmp_path / "run", "train.batch_size": 16,
            "train.warmup_steps": 5, "train.log_every": 10, "train.device": "cpu", "train.threads": 1,
            "train.seed": 0, "train.dtype": "float32", "train.lr": 1e-2, "train.max_steps": 40,
            "train.eval_every": 40, "options.max_source_length": 12, "options.max_target_length": 10,
            "options.rnn.d_emb": 32, "options.rnn.d_hidden": 64, "options.rnn.dropout": 0.0}
    over.update(extra)
    return load_finetune_config(None, task, [f"{k}={v}" for k, v in over.items()])


@pytest.mark.usefixtures("one_thread")
def test_translate_recipe_on_chinese_targets_reports_nonzero_bleu_and_rouge(tmp_path):
    from attnlab.finetune import load_finetuned, run

    logs: list[str] = []
    res = run(_recipe(tmp_path), progress=False, log=logs.append)
    assert any("bleu with bleu_tokenize=zh (targets: zh, detected from the training targets)" in s for s in logs)
    assert 0 < res["test"]["bleu"] <= 100
    task, model, tok = load_finetuned(tmp_path / "run")
    assert task.state["scoring"] == {"lang": "zh", "bleu_tokenize": "zh", "rouge_tokenize": "char"}
    test = task.read(str(tmp_path / "test.jsonl"))
    preds, refs = task.predict(model, test, tok), [r["target"] for r in test]
    assert task.score(preds, refs) == res["test"]
    # the same predictions under the default tokenizers: what the recipe reported before
    assert rouge(preds, refs)["rougeL"] > 0 and rouge(preds, refs, lang="en")["rougeL"] == 0.0
    assert bleu(preds, refs, lang="en")["bleu"] < res["test"]["bleu"]


def test_options_lang_overrides_detection_and_is_checked(tmp_path):
    from attnlab.finetune.recipe import task_class

    task = task_class("translate")(_recipe(tmp_path, **{"options.lang": "en"}))
    task.log = lambda s: None
    task.build(task.read(str(tmp_path / "train.jsonl")))
    assert task.state["scoring"] == {"lang": None, "bleu_tokenize": "13a", "rouge_tokenize": "default"}
    summ = task_class("summarize")(_recipe(tmp_path, "summarize", **{"options.source_column": "source",
                                                                      "options.target_column": "target"}))
    summ.log = lambda s: None
    train = summ.read(str(tmp_path / "train.jsonl"))
    summ.build(train)
    targets = [r["target"] for r in train[:4]]
    assert summ.score(targets, targets) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    with pytest.raises(ConfigError, match="options.lang 'chinese' is not a language code") as e:
        _recipe(tmp_path, **{"options.lang": "chinese"})
    assert "\n" not in str(e.value)
