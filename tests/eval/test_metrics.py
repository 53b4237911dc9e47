"""Task metrics against hand-computed values and against sacrebleu / rouge-score called directly."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from attnlab.errors import AttnlabError
from attnlab.eval import (
    METRICS,
    accuracy,
    bleu,
    chrf,
    compute,
    confusion_matrix,
    exact_match,
    f1,
    normalize_answer,
    precision_recall_f1,
    rouge,
    squad_scores,
)
from attnlab.eval.metrics import perplexity

# ---------------------------------------------------------------- classification
# Per class (worked by hand):  0: tp=2 fp=1 fn=0 -> P=2/3 R=1   F1=0.8
#                              1: tp=1 fp=0 fn=2 -> P=1   R=1/3 F1=0.5
#                              2: tp=1 fp=1 fn=0 -> P=1/2 R=1   F1=2/3
PREDS = [0, 0, 0, 1, 2, 2]
LABELS = [0, 0, 1, 1, 1, 2]


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
def test_accuracy_and_macro_micro_by_hand(kind):
    conv = {"list": list, "numpy": np.array, "tensor": torch.tensor}[kind]
    p, y = conv(PREDS), conv(LABELS)
    assert accuracy(p, y) == pytest.approx(4 / 6)
    macro = precision_recall_f1(p, y, average="macro")
    assert macro["precision"] == pytest.approx(13 / 18)
    assert macro["recall"] == pytest.approx(7 / 9)
    assert macro["f1"] == pytest.approx(59 / 90)
    micro = precision_recall_f1(p, y, average="micro")
    assert micro == pytest.approx({"precision": 4 / 6, "recall": 4 / 6, "f1": 4 / 6})


def test_confusion_matrix_by_hand():
    m = confusion_matrix(torch.tensor(PREDS), LABELS, n_classes=4)
    expected = [[2, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]  # rows gold, cols predicted
    assert m.tolist() == expected and m.dtype == np.int64


def test_binary_and_positive_class():
    p, y = [1, 1, 1, 0, 0], [1, 0, 0, 1, 0]
    pos1 = precision_recall_f1(p, y, average="binary")  # tp=1 fp=2 fn=1
    assert pos1 == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4})
    pos0 = precision_recall_f1(p, y, average="binary", positive=0)  # tp=1 fp=1 fn=2
    assert pos0 == pytest.approx({"precision": 1 / 2, "recall": 1 / 3, "f1": 0.4})
    # String labels work; a class never predicted has precision 0 (no division by zero).
    s = precision_recall_f1(["no", "no"], ["yes", "no"], average="binary", positive="yes")
    assert s == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_macro_counts_classes_from_label_set():
    # With classes=[0, 1, 2], the unseen class 2 contributes zeros to the macro mean.
    r = precision_recall_f1([0, 1], [0, 1], classes=[0, 1, 2])
    assert r == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})


def test_random_against_loop_reference():
    rng = np.random.default_rng(0)
    p, y = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    m = np.zeros((4, 4), dtype=int)
    for gi, pi in zip(y, p, strict=False):
        m[gi, pi] += 1
    assert (confusion_matrix(p, y, 4) == m).all()
    f1s = []
    for c in range(4):
        tp, fp, fn = m[c, c], m[:, c].sum() - m[c, c], m[c, :].sum() - m[c, c]
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert precision_recall_f1(p, y)["f1"] == pytest.approx(np.mean(f1s))
    assert precision_recall_f1(p, y, average="micro")["f1"] == pytest.approx(np.trace(m) / 200)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: accuracy([1, 2], [1]), "differ in length"),
        (lambda: accuracy([], []), "no predictions"),
        (lambda: accuracy([0, 3], [0, 1], classes=[0, 1]), "not in the label set"),
        (lambda: confusion_matrix([0, 1], [0, 2], n_classes=2), "label 2 is not in the label set"),
        (lambda: accuracy(np.zeros((2, 3)), np.zeros((2, 3))), "must be 1-D"),
        (lambda: precision_recall_f1([0, 1, 2], [0, 1, 2], average="binary"), "at most 2 classes"),
        (lambda: precision_recall_f1([0, 1], [0, 1], average="weighted"), "unknown average"),
        (lambda: precision_recall_f1([0, 1], [0, 1], average="binary", positive=5, classes=[0, 1]), "positive class"),
    ],
)
def test_classification_errors(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- SQuAD
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The  Cat, sat!", "cat sat"),
        ("An apple a day", "apple day"),
        ("theater anthem", "theater anthem"),  # articles only as whole words
        ("A-team", "ateam"),  # punctuation goes first, so "a" is no longer a word
        ("Don't\tstop\nthe music.", "dont stop music"),
        ("Café ÉTÉ", "café été"),
        ("...", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_and_f1_by_hand():
    assert exact_match("The Eiffel Tower", ["eiffel tower!", "Paris"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0
    assert exact_match("Paris", "paris.") == 1.0  # a bare string is one gold answer
    # [big, red, dog] vs [red, dog, barked]: overlap 2, P = R = 2/3
    assert f1("the big red dog", ["a red dog barked"]) == pytest.approx(2 / 3)
    # best over gold answers: [red, dog] vs [red, dog, runs] -> P=1, R=2/3 -> 0.8
    assert f1("red dog", ["blue cat", "red dog runs"]) == pytest.approx(0.8)
    # repeated tokens count once per match: P=1/3, R=1 -> 0.5
    assert f1("dog dog dog", ["dog"]) == pytest.approx(0.5)
    assert f1("blue cat", ["red dog"]) == 0.0


def test_empty_and_no_answer():
    assert f1("", ["something"]) == 0.0 and exact_match("", ["something"]) == 0.0
    assert f1("something", [""]) == 0.0 and exact_match("something", [""]) == 0.0
    for golds in ([], [""]):  # SQuAD 2.0 unanswerable: right iff prediction is empty
        assert f1("", golds) == 1.0 and exact_match("", golds) == 1.0
        assert f1("the !", golds) == 1.0  # normalizes to empty
        assert f1("Paris", golds) == 0.0 and exact_match("Paris", golds) == 0.0


def test_squad_scores_percentages_and_missing():
    refs = {"q1": ["Paris"], "q2": ["big red dog"], "q3": [], "q4": ["x"]}
    preds = {"q1": "paris.", "q2": "the red dog", "q3": "", "extra": "ignored"}
    with pytest.warns(UserWarning, match="1 of 4 questions have no prediction.*q4"):
        s = squad_scores(preds, refs)
    # EM: 1, 0, 1, 0 -> 50 %;  F1: 1, 0.8, 1, 0 -> 70 %
    assert s == pytest.approx({"exact_match": 50.0, "f1": 70.0, "total": 4.0, "missing": 1.0})
    with pytest.raises(ValueError, match="no reference questions"):
        squad_scores({}, {})


# ---------------------------------------------------------------- generation
HYPS = ["the cat sat on the mat", "a quick brown fox jumps over a lazy dog", "hello there world"]
REFS = ["the cat is sitting on the mat", "the quick brown fox jumped over the lazy dog", "hello world"]


def test_bleu_matches_sacrebleu():
    import sacrebleu

    got = bleu(HYPS, REFS)
    ref = sacrebleu.corpus_bleu(HYPS, [REFS])
    assert got["bleu"] == pytest.approx(ref.score) and 0 < got["bleu"] < 100
    assert got["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    # several references per hypothesis -> sacrebleu reference streams
    refs2 = ["a cat sat on a mat", "a quick brown fox jumps over the lazy dog", "hello there"]
    multi = bleu(HYPS, [[a, b] for a, b in zip(REFS, refs2, strict=False)])
    assert multi["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, refs2]).score)
    assert multi["bleu"] > got["bleu"]
    low = bleu(["The Cat Sat On The Mat"], ["the cat sat on the mat"], lowercase=True)
    assert low["bleu"] == pytest.approx(100.0) and "case:lc" in low["signature"]


def test_chrf_matches_sacrebleu():
    import sacrebleu

    got = chrf(HYPS, REFS)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score) and 0 < got["chrf"] < 100
    assert got["signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    refs2 = ["a cat sat on a mat", "a quick brown fox jumps over the lazy dog", "hello there"]
    multi = chrf(HYPS, [[a, b] for a, b in zip(REFS, refs2, strict=True)])
    assert multi["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS, refs2]).score)
    assert multi["chrf"] > got["chrf"]
    plus = chrf(HYPS, REFS, word_order=2)  # chrF++
    assert plus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score)
    assert chrf(["Das Haus"], ["Das Haus"])["chrf"] == pytest.approx(100.0) and chrf(["xyz"], ["Haus"])["chrf"] == 0


def test_bleu_hand_cases():
    assert bleu(["the cat sat on the mat"], [["the cat sat on the mat"]])["bleu"] == pytest.approx(100.0)
    assert bleu(["one two three four"], ["five six seven eight"])["bleu"] == pytest.approx(0.0)


def test_rouge_matches_rouge_score():
    from rouge_score import rouge_scorer

    for stem in (False, True):
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem)
        per = [scorer.score(r, h) for h, r in zip(HYPS, REFS, strict=False)]
        expected = {t: 100 * np.mean([s[t].fmeasure for s in per]) for t in ("rouge1", "rouge2", "rougeL")}
        assert rouge(HYPS, REFS, use_stemmer=stem) == pytest.approx({**expected, "rouge_tokenize": "default"})


def test_rouge_hand_cases():
    # [the, cat, sat] vs [the, cat, ran, away]: unigrams P=2/3 R=1/2 -> 4/7; bigrams P=1/2 R=1/3 -> 2/5
    r = rouge(["the cat sat"], ["the cat ran away"])
    # English keeps rouge-score's own tokenizer ("default"), and says so
    assert r == pytest.approx({"rouge1": 400 / 7, "rouge2": 40.0, "rougeL": 400 / 7, "rouge_tokenize": "default"})
    assert rouge(["same words here"], ["same words here"]) == pytest.approx(
        {"rouge1": 100, "rouge2": 100, "rougeL": 100, "rouge_tokenize": "default"})
    assert rouge(["alpha beta"], ["gamma delta"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0,
                                                      "rouge_tokenize": "default"}
    assert rouge(["running dogs"], ["run dog"], rouge_types=["rouge1"]) == {"rouge1": 0.0, "rouge_tokenize": "default"}
    assert rouge(["running dogs"], ["run dog"], use_stemmer=True, rouge_types=["rouge1"]) == pytest.approx(
        {"rouge1": 100.0, "rouge_tokenize": "default"})
    # several references: the best one counts
    assert rouge(["the cat sat"], [["gamma delta", "the cat sat"]])["rouge1"] == pytest.approx(100.0)


def test_generation_input_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        rouge([], [])
    with pytest.raises(ValueError, match="not a single string"):
        rouge("a b", "a b")


@pytest.mark.parametrize("module, fn", [("sacrebleu", bleu), ("sacrebleu", chrf), ("rouge_score.rouge_scorer", rouge)])
def test_missing_optional_package(monkeypatch, module, fn):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(AttnlabError, match=r"pip install 'attnlab\[eval\]'"):
        fn(["a b c d"], ["a b c d"])


# ---------------------------------------------------------------- perplexity and registry
def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity([1.0, 3.0]) == pytest.approx(math.e**2)  # mean first
    assert perplexity(torch.tensor([[0.5, 1.5]])) == pytest.approx(math.e)
    assert perplexity(torch.tensor(2.0)) == pytest.approx(math.e**2)
    assert perplexity(709.0) == pytest.approx(math.exp(709.0))
    assert perplexity(1e4) == math.inf  # no OverflowError
    for bad in (-0.1, float("nan"), []):
        with pytest.raises(ValueError):
            perplexity(bad)


def test_registry_and_compute():
    assert set(METRICS) == {"accuracy", "f1", "squad", "bleu", "chrf", "rouge", "perplexity"}
    assert compute("accuracy", PREDS, LABELS) == pytest.approx({"accuracy": 4 / 6})
    assert compute("f1", PREDS, LABELS, average="micro")["f1"] == pytest.approx(4 / 6)
    assert compute("squad", {"q": "The Paris"}, {"q": ["paris"]})["exact_match"] == 100.0
    assert compute("bleu", ["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(100.0)
    assert compute("rouge", ["a b"], ["a b"], use_stemmer=True)["rougeL"] == pytest.approx(100.0)
    assert compute("perplexity", math.log(3.0)) == pytest.approx({"perplexity": 3.0})
    with pytest.raises(ValueError, match="unknown metric 'rogue' \\(did you mean 'rouge'\\?\\)") as e:
        compute("rogue", ["a"], ["a"])
    assert "\n" not in str(e.value)
