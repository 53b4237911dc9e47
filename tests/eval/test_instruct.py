"""The instruction-following suite: each task's metrics on hand-made replies, run_suite with a fake
reply function, sequence log-probs against a token-by-token loop, preference accuracy on a tiny model."""

from __future__ import annotations

import random
import re

import pytest
import torch

from attnlab.config import ModelConfig
from attnlab.data.chat import ChatTemplate, add_chat_tokens, encode_prompt
from attnlab.data.chat_data import Conversation, PreferencePair
from attnlab.data.sources.poetry import read_extract, regular_body
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError
from attnlab.eval.instruct import (
    parse_form,
    poem_form,
    preference_accuracy,
    run_suite,
    score_task,
    split_record,
)
from attnlab.eval.logprobs import pad_sequences, sequence_logprobs
from attnlab.models import build

pytest.importorskip("sacrebleu", reason="sacrebleu not installed: pip install 'attnlab[eval]'")
pytest.importorskip("rouge_score", reason="rouge-score not installed: pip install 'attnlab[eval]'")

JINGYESI = "床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。"  # 五言绝句
DENGGAO = ("风急天高猿啸哀，渚清沙白鸟飞回。无边落木萧萧下，不尽长江滚滚来。"
           "万里悲秋常作客，百年多病独登台。艰难苦恨繁霜鬓，潦倒新停浊酒杯。")  # 七言律诗


def rec(task: str, user: str, answer: str, where: str = "t.jsonl line 1", **meta) -> Conversation:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Conversation(msgs, where, {"task": task, "reference": answer, **meta})


# ---------------------------------------------------------------------------------------------- metrics


def test_sentiment_accuracy_and_valid_labels():
    en = [rec("sentiment-en", "Review: great. Positive or negative?", "positive", labels=["positive", "negative"]),
          rec("sentiment-en", "Review: awful. Positive or negative?", "negative", labels=["positive", "negative"])]
    refs = ["positive", "negative"]
    assert score_task("sentiment-en", [" Positive.", "negative"], refs, en) == {"accuracy": 1.0, "valid": 1.0, "n": 2}
    # One wrong label, one reply that is no label at all.
    assert score_task("sentiment-en", ["negative", "it is bad"], refs, en) == {"accuracy": 0.0, "valid": 0.5, "n": 2}
    zh = [rec("sentiment-zh", "这条评论是正面还是负面？", "正面", labels=["正面", "负面"])]
    assert score_task("sentiment-zh", ["正面。"], ["正面"], zh)["accuracy"] == 1.0
    assert score_task("sentiment-zh", ["positive"], ["正面"], zh) == {"accuracy": 0.0, "valid": 0.0, "n": 1}
    no_labels = [rec("sentiment-en", "?", "positive", where="t.jsonl line 7")]
    with pytest.raises(AttnlabError, match="t.jsonl line 7: a sentiment record needs 'labels'"):
        score_task("sentiment-en", ["positive"], ["positive"], no_labels)


def test_translation_chrf_and_bleu():
    refs = ["Das Haus ist sehr groß und alt.", "Der Hund schläft im Garten."]
    records = [rec("translate-en-de", "Translate: ...", r) for r in refs]
    perfect = score_task("translate-en-de", refs, refs, records)
    assert perfect["chrf"] == pytest.approx(100.0) and perfect["bleu"] == pytest.approx(100.0) and perfect["n"] == 2
    wrong = score_task("translate-en-de", ["Katze.", "Ein Apfel rollt."], refs, records)
    assert wrong["chrf"] < 20 and wrong["bleu"] < 5
    partial = score_task("translate-en-de", ["Das Haus ist groß.", "Der Hund schläft."], refs, records)
    assert wrong["chrf"] < partial["chrf"] < 100


def test_reading_squad_scores():
    records = [rec("reading", "Context ... Who says it?", "Roderigo"), rec("reading", "Which word follows?", "dream")]
    refs = ["Roderigo", "dream"]
    assert score_task("reading", ["Roderigo.", "the dream"], refs, records) == {"exact_match": 100.0, "f1": 100.0,
                                                                               "n": 2}
    wrong = score_task("reading", ["Iago", "of such a dream"], refs, records)
    # "of such a dream" → "of such dream" (the article goes): P 1/3, R 1, F1 1/2; "Iago" scores 0.
    assert wrong["exact_match"] == 0.0 and wrong["f1"] == pytest.approx(100 * (0 + 0.5) / 2)


def test_headline_chrf_and_rouge_l():
    refs = ["Betsy DeVos Confirmed as Education Secretary"]
    records = [rec("headline", "Title this article: ...", refs[0])]
    perfect = score_task("headline", refs, refs, records)
    assert perfect["chrf"] == pytest.approx(100.0) and perfect["rougeL"] == pytest.approx(100.0)
    wrong = score_task("headline", ["Storm hits the coast"], refs, records)
    assert wrong["rougeL"] == 0.0 and wrong["chrf"] < 20


def test_regular_poem_check_on_real_and_broken_poems():
    real = next(line for line in read_extract() if line.strip())  # 《title》body from the shipped extract
    body = real.split("》", 1)[1]
    assert regular_body([body]) == body
    assert poem_form(real) is not None  # the leading 《title》 is allowed
    assert poem_form(JINGYESI) == (5, 4) and poem_form(DENGGAO) == (7, 8)
    assert poem_form(" 《靜夜思》\n床前看月光，疑是地上霜。\n舉頭望山月，低頭思故鄉。") == (5, 4)
    assert poem_form("床前看月光，疑是地上霜。舉頭望月，低頭思故鄉。") is None  # a line of 4
    assert poem_form("床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉，") is None  # wrong last mark
    assert poem_form("床前看月光，疑是地上霜。") is None  # 2 lines


def test_parse_form_from_prompts_and_meta():
    assert parse_form("写一首五言绝句，题目是《静夜思》") == (5, 4)
    assert parse_form("請寫一首七言律詩，題為《登高》") == (7, 8)
    assert parse_form("写一首七律，题目是《绝句》") == (7, 8)  # the title is not read as a form
    assert parse_form("Write a five-character jueju titled 《春晓》") == (5, 4)
    assert parse_form("Write a seven-character lüshi titled 《登高》") == (7, 8)
    with pytest.raises(AttnlabError, match="f line 3: poem prompt names no full form"):
        parse_form("写一首诗", "f line 3")
    with pytest.raises(AttnlabError, match="names two forms"):
        parse_form("写一首五言或七言绝句")


def test_poem_regular_rate_and_form():
    records = [rec("poem", "写一首五言绝句，题目是《静夜思》", JINGYESI),
               rec("poem", "Write a seven-character lüshi titled 《登高》", DENGGAO),
               rec("poem", "写一首诗，题目是《静夜思》", JINGYESI, form="五言绝句")]  # the form from meta
    refs = [r.meta["reference"] for r in records]
    assert score_task("poem", refs, refs, records) == {"regular": 1.0, "form_ok": 1.0, "n": 3}
    # Regular but the wrong form (a qiyan lüshi where a wuyan jueju was asked); a broken poem; prose.
    got = score_task("poem", [DENGGAO, DENGGAO[:-1], "我不会写诗。"], refs, records)
    assert got == {"regular": pytest.approx(1 / 3), "form_ok": 0.0, "n": 3}


def test_score_task_refuses_bad_input():
    r = [rec("reading", "q", "a")]
    with pytest.raises(AttnlabError, match="unknown instruct task 'summarize'"):
        score_task("summarize", ["a"], ["a"], r)
    with pytest.raises(AttnlabError, match="2 predictions, 1 references and 1 records"):
        score_task("reading", ["a", "b"], ["a"], r)


# ---------------------------------------------------------------------------------------------- run_suite


def _suite_records() -> list[Conversation]:
    labels = ["positive", "negative"]
    return [
        rec("sentiment-en", "Review: lovely film", "positive", "f line 1", labels=labels),
        rec("translate-en-de", "Translate to German: The house is big.", "Das Haus ist groß.", "f line 2"),
        rec("sentiment-en", "Review: dull film", "negative", "f line 3", labels=labels),
        rec("poem", "写一首五言绝句，题目是《静夜思》", JINGYESI, "f line 4"),
        rec("sentiment-en", "Review: fine film", "positive", "f line 5", labels=labels),
    ]


def test_run_suite_groups_asks_and_scores():
    asked = []
    answers = {"Review: lovely film": "positive", "Review: dull film": "positive", "Review: fine film": "Positive",
               "Translate to German: The house is big.": "Das Haus ist groß.",
               "写一首五言绝句，题目是《静夜思》": JINGYESI}

    def reply_fn(messages):
        asked.append(messages)
        assert messages[-1]["role"] == "user"  # the gold answer is never shown
        return "  " + answers[messages[-1]["content"]] + "\n"

    res = run_suite(_suite_records(), reply_fn, progress=False)
    assert len(asked) == 5 and all(len(m) == 1 for m in asked)
    assert list(res["tasks"]) == ["poem", "sentiment-en", "translate-en-de"]
    assert res["tasks"]["sentiment-en"] == {"accuracy": pytest.approx(2 / 3), "valid": 1.0, "n": 3, "too_long": 0}
    assert res["headline"] == {"poem": 1.0, "sentiment-en": pytest.approx(2 / 3),
                               "translate-en-de": pytest.approx(100.0)}
    assert res["headline_metric"] == {"poem": "form_ok", "sentiment-en": "accuracy", "translate-en-de": "chrf"}
    assert res["replies"]["sentiment-en"][1] == {"where": "f line 3", "reply": "positive", "reference": "negative"}

    limited = run_suite(_suite_records(), reply_fn, progress=False, limit=1)
    assert {t: s["n"] for t, s in limited["tasks"].items()} == {"poem": 1, "sentiment-en": 1, "translate-en-de": 1}


def test_a_prompt_too_long_for_the_context_is_a_wrong_answer_and_counted():
    from attnlab.errors import ContextOverflowError

    def reply_fn(messages):
        if messages[-1]["content"] == "Review: dull film":
            raise ContextOverflowError("your message is 300 tokens ...")
        return {"Review: lovely film": "positive", "Review: fine film": "positive"}.get(messages[-1]["content"], "")

    res = run_suite([r for r in _suite_records() if r.meta["task"] == "sentiment-en"], reply_fn, progress=False)
    assert res["tasks"]["sentiment-en"] == {"accuracy": pytest.approx(2 / 3), "valid": pytest.approx(2 / 3), "n": 3,
                                            "too_long": 1}
    assert res["replies"]["sentiment-en"][1]["reply"] == ""


def test_run_suite_refuses_records_it_cannot_score():
    no_task = Conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "g line 2", {})
    with pytest.raises(AttnlabError, match="g line 2: the record has no 'task'"):
        run_suite([no_task], lambda m: "", progress=False)
    no_ref = Conversation([{"role": "user", "content": "hi"}], "g line 3", {"task": "reading"})
    with pytest.raises(AttnlabError, match="g line 3: no reference answer"):
        split_record(no_ref)
    with pytest.raises(AttnlabError, match="returned NoneType, not text"):
        run_suite([rec("reading", "q", "a")], lambda m: None, progress=False)


# ---------------------------------------------------------------------------------------------- log-probs


@pytest.fixture(scope="module")
def chat_model():
    texts = ["The film was lovely and the house is big, said the critic.", "Translate to German: Das Haus ist groß.",
             "Review: a dull film with a weak story. Positive or negative? negative"] * 10
    tpl = ChatTemplate.default()
    tok = add_chat_tokens(Tokenizer.train_bpe(texts, 400, special_tokens=("<|endoftext|>",)), tpl)
    torch.manual_seed(0)
    model = build(ModelConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=2, n_head=2, d_model=32)).eval()
    return model, tok, tpl


def test_sequence_logprobs_equal_a_token_by_token_loop(chat_model):
    model, tok, _ = chat_model
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, tok.vocab_size, (n,), generator=g).tolist() for n in (9, 4, 13)]
    masks = [[False] + [i % 3 != 1 for i in range(1, len(s))] for s in seqs]
    ids, mask = pad_sequences(list(zip(seqs, masks, strict=True)))
    assert ids.shape == mask.shape == (3, 13)
    got = sequence_logprobs(model, ids, mask)  # (3,)
    with torch.no_grad():
        for b, (s, m) in enumerate(zip(seqs, masks, strict=True)):
            lp = torch.log_softmax(model(torch.tensor([s]))[0].double(), dim=-1)  # (T, V)
            want = sum(float(lp[t - 1, s[t]]) for t in range(1, len(s)) if m[t])
            assert float(got[b]) == pytest.approx(want, abs=1e-4)
    got.sum().backward()  # differentiable, as DPO needs
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="mask\\[:, 0\\] is True"):
        sequence_logprobs(model, ids, torch.ones_like(mask))


def _words(tok: Tokenizer) -> list[int]:
    """Ids of the whole-word tokens (`` word``): text made of them encodes back to the same ids."""
    return [i for i in range(tok.vocab_size) if re.fullmatch(r" [A-Za-z]+", tok.decode([i]))]


def _greedy_reply(model, tok, tpl, prompt, n=6) -> str:
    """The model's own greedy continuation of the rendered prompt, among whole-word tokens."""
    ids, words = encode_prompt(tok, tpl, prompt), torch.tensor(_words(tok))
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids + out]))[0, -1]  # (V,)
            out.append(int(words[logits[words].argmax()]))
    assert tok.encode(tok.decode(out)) == out
    return tok.decode(out)


def test_preference_accuracy_prefers_the_models_own_greedy_reply(chat_model):
    model, tok, tpl = chat_model
    rng = random.Random(0)
    pairs = []
    for i, q in enumerate(["Is the film lovely?", "Translate: the house", "Review: dull. Positive?", "Say hi",
                           "Wie groß ist das Haus?"]):
        prompt = [{"role": "user", "content": q}]
        greedy = _greedy_reply(model, tok, tpl, prompt)
        noise = tok.decode(rng.choices(_words(tok), k=6))  # as many whole words, drawn at random
        pairs.append(PreferencePair(prompt, greedy, noise, f"p line {i + 1}", {"task": "sentiment-en" if i < 3 else
                                                                             "other"}))
    res = preference_accuracy(model, tok, tpl, pairs, batch_size=2, progress=False)
    assert res["accuracy"] == 1.0 and res["margin"] > 0 and res["n"] == 5 and res["truncated"] == 0
    assert res["tasks"]["sentiment-en"]["n"] == 3 and res["tasks"]["other"]["accuracy"] == 1.0
    one = preference_accuracy(model, tok, tpl, pairs, batch_size=1, progress=False)  # padding changes nothing
    assert one["margin"] == pytest.approx(res["margin"], abs=1e-4)
    swapped = [PreferencePair(p.prompt, p.rejected, p.chosen, p.where, p.meta) for p in pairs]
    back = preference_accuracy(model, tok, tpl, swapped, batch_size=3, progress=False)
    assert back["accuracy"] == 0.0 and back["margin"] == pytest.approx(-res["margin"], abs=1e-4)


def test_preference_accuracy_cuts_long_prompts_and_refuses_long_replies(chat_model):
    model, tok, tpl = chat_model  # context 96 tokens
    long_prompt = [{"role": "user", "content": "the film was lovely " * 40}]
    pair = PreferencePair(long_prompt, "positive", "negative", "p line 1", {})
    res = preference_accuracy(model, tok, tpl, [pair], progress=False)
    assert res["truncated"] == 2 and res["n"] == 1
    long_reply = PreferencePair([{"role": "user", "content": "hi"}], "lovely " * 120, "no", "p line 2", {})
    with pytest.raises(AttnlabError, match="p line 2: the reply alone is longer than the model's context of 96"):
        preference_accuracy(model, tok, tpl, [long_reply], progress=False)
