"""`attnlab eval RUN --suite instruct`: the wiring (data → chat replies → scores → table / JSON), with the
chat session and loader replaced by fakes, one-line errors, and the real ChatSession once it exists."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from attnlab.cli import _chat, main
from attnlab.config import ModelConfig
from attnlab.data.chat import ChatTemplate, add_chat_tokens
from attnlab.data.tokenizer import Tokenizer
from attnlab.models import build

pytest.importorskip("sacrebleu", reason="sacrebleu not installed: pip install 'attnlab[eval]'")

LABELS_EN = ["positive", "negative"]
RECORDS = [
    {"task": "sentiment-en", "lang": "en", "labels": LABELS_EN, "reference": "positive",
     "messages": [{"role": "user", "content": "Review: a lovely film. Positive or negative?"},
                  {"role": "assistant", "content": "positive"}]},
    {"task": "sentiment-en", "lang": "en", "labels": LABELS_EN, "reference": "negative",
     "messages": [{"role": "user", "content": "Review: a dull film. Positive or negative?"},
                  {"role": "assistant", "content": "negative"}]},
    {"task": "sentiment-en", "lang": "en", "labels": LABELS_EN, "reference": "negative",
     "messages": [{"role": "user", "content": "Review: a weak story. Positive or negative?"},
                  {"role": "assistant", "content": "negative"}]},
    {"task": "translate-en-de", "lang": "en", "reference": "Das Haus ist groß.",
     "messages": [{"role": "system", "content": "You translate."},
                  {"role": "user", "content": "Translate to German: The house is big."},
                  {"role": "assistant", "content": "Das Haus ist groß."}]},
    {"task": "poem", "lang": "zh", "reference": "床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。",
     "messages": [{"role": "user", "content": "写一首五言绝句，题目是《静夜思》"},
                  {"role": "assistant", "content": "床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。"}]},
]
PAIRS = [{"task": "sentiment-en", "lang": "en", "prompt": [{"role": "user", "content": "Review: dull. Positive?"}],
          "chosen": "negative", "rejected": "positive"}]
# The fake model's answers: the first two sentiment replies right, the third wrong; the rest perfect.
ANSWERS = {"Review: a lovely film. Positive or negative?": "Positive.",
           "Review: a dull film. Positive or negative?": "negative",
           "Review: a weak story. Positive or negative?": "positive",
           "Translate to German: The house is big.": "Das Haus ist groß.",
           "写一首五言绝句，题目是《静夜思》": "床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。"}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    return _write_jsonl(tmp_path / "test.jsonl", RECORDS), _write_jsonl(tmp_path / "prefs.jsonl", PAIRS)


@pytest.fixture
def fake_chat(monkeypatch):
    """``load_chat_model`` and ``ChatSession`` replaced: a tiny real model (for preferences), canned replies."""
    tpl = ChatTemplate.default()
    tok = add_chat_tokens(Tokenizer.train_bpe(["a dull film. Positive or negative?"] * 5, 300,
                                              special_tokens=("<|endoftext|>",)), tpl)
    torch.manual_seed(0)
    model = build(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, d_model=16)).eval()
    calls: dict[str, list] = {"load": [], "sessions": [], "asked": []}

    class Weights:
        def line(self):
            return "weights: float32 (fake)"

    def load_chat_model(path, device, dtype, quantize):
        calls["load"].append((path, device, dtype, quantize))
        return model, tok, tpl, torch.device("cpu"), Weights()

    class ChatSession:
        def __init__(self, model_, tokenizer, template, sampling, system=None):
            assert model_ is model and tokenizer is tok and template is tpl
            calls["sessions"].append({"system": system, "temperature": sampling.temperature,
                                      "max_new_tokens": sampling.max_new_tokens})
            self.history = []

        def reset(self):
            self.history = []

        def reply(self, text):
            assert self.history == []  # every prompt starts a fresh conversation
            calls["asked"].append(text)
            self.history.append(text)
            return ANSWERS[text]

    monkeypatch.setattr(_chat, "load_chat_model", load_chat_model)
    monkeypatch.setitem(sys.modules, "attnlab.generate.chat", types.SimpleNamespace(ChatSession=ChatSession))
    return calls


def test_suite_prints_a_table_and_writes_every_reply(capsys, tmp_path, files, fake_chat):
    data, prefs = files
    out = tmp_path / "res" / "instruct.json"
    code = main(["eval", "runs/chat", "--suite", "instruct", "--data", str(data), "--preferences", str(prefs),
                 "--max-new-tokens", "40", "--device", "cpu", "--quantize", "int8", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert fake_chat["load"] == [("runs/chat", "cpu", "auto", "int8")]
    assert sorted(fake_chat["asked"]) == sorted(ANSWERS)
    sessions = {s["system"]: s for s in fake_chat["sessions"]}
    assert set(sessions) == {None, "You translate."}  # one session per system prompt, reset per prompt
    assert all(s["temperature"] == 0.0 and s["max_new_tokens"] == 40 for s in sessions.values())
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["headline"] == {"poem": 1.0, "sentiment-en": pytest.approx(2 / 3),
                               "translate-en-de": pytest.approx(100.0)}
    assert res["tasks"]["sentiment-en"]["n"] == 3 and res["tasks"]["sentiment-en"]["valid"] == 1.0
    assert res["replies"]["sentiment-en"][0]["reply"] == "Positive."
    assert res["preferences"]["n"] == 1 and set(res["preferences"]["tasks"]) == {"sentiment-en"}
    assert "sentiment-en" in printed and "accuracy" in printed and "0.6667" in printed
    assert "preferences: accuracy" in printed and f"results: {out}" in printed


def test_limit_and_json(capsys, files, fake_chat):
    data, _ = files
    assert main(["eval", "runs/chat", "--suite", "instruct", "--data", str(data), "--limit", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {t: s["n"] for t, s in res["tasks"].items()} == {"poem": 1, "sentiment-en": 1, "translate-en-de": 1}
    assert "replies" not in res and res["limit"] == 1 and res["max_new_tokens"] == 128
    assert len(fake_chat["asked"]) == 3


@pytest.mark.parametrize("argv,needle", [
    (["--suite", "instruct"], "--suite instruct needs --data FILE"),
    (["--suite", "instruct", "--data", "DATA", "--limit", "0"], "--limit must be an integer >= 1, got 0"),
    (["--suite", "instruct", "--data", "DATA", "--rope-scaling", "ntk"], "--rope-scaling do not apply to --suite"),
    (["--limit", "3", "--out", "x.json"], "--limit, --out apply to --suite instruct only"),
    (["--suite", "instruct", "--data", "MISSING"], "not found"),
])
def test_bad_flags_are_one_line(capsys, one_line_error, files, fake_chat, argv, needle):
    data, _ = files
    argv = [str(data) if a == "DATA" else str(data.parent / "missing.jsonl") if a == "MISSING" else a for a in argv]
    one_line_error(capsys, main(["eval", "runs/chat", *argv]), needle)
    assert fake_chat["load"] == []  # refused before loading any model


def test_multi_turn_prompt_is_refused_with_its_line(capsys, one_line_error, tmp_path, fake_chat):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "Review: x. Positive?"}, {"role": "assistant", "content": "positive"}]
    data = _write_jsonl(tmp_path / "t.jsonl", [RECORDS[0], {**RECORDS[1], "messages": turns}])
    one_line_error(capsys, main(["eval", "runs/chat", "--suite", "instruct", "--data", str(data)]),
                   f"{data} line 2: --suite instruct asks single-turn prompts")


def test_with_the_real_chat_session(capsys, tmp_path, request):
    """The replies the suite scores are ChatSession's greedy replies."""
    from attnlab.generate import chat
    from attnlab.generate.config import SamplingConfig

    trained_run = request.getfixturevalue("trained_run")  # trained only when the test runs
    rows = [{"task": "sentiment-en", "labels": LABELS_EN, "reference": "positive",
             "messages": [{"role": "user", "content": "ROMEO. Good?"}, {"role": "assistant", "content": "positive"}]},
            {"task": "reading", "reference": "Romeo",
             "messages": [{"role": "user", "content": "Who speaks?"}, {"role": "assistant", "content": "Romeo"}]}]
    data, out = _write_jsonl(tmp_path / "t.jsonl", rows), tmp_path / "res.json"
    code = main(["eval", str(trained_run), "--suite", "instruct", "--data", str(data), "--max-new-tokens", "6",
                 "--device", "cpu", "--dtype", "float32", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    got = json.loads(out.read_text(encoding="utf-8"))["replies"]
    model, tok, tpl, _, _ = _chat.load_chat_model(str(trained_run), "cpu", "float32", "none")
    session = chat.ChatSession(model, tok, tpl, SamplingConfig(max_new_tokens=6, temperature=0.0))
    for row in rows:
        session.reset()
        want = session.reply(row["messages"][0]["content"]).strip()
        assert got[row["task"]][0]["reply"] == want
