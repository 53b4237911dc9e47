"""ChatSession: replies are greedy/sampled generation on the rendered conversation, cut at the end of a turn;
later turns see the earlier ones; the history is trimmed (oldest pairs first) to fit the context."""

from __future__ import annotations

import pytest
import torch

from attnlab.config import ModelConfig
from attnlab.data.chat import DEFAULT_TEMPLATE, IM_END, ChatTemplate, encode_prompt
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError
from attnlab.generate import SamplingConfig, generate
from attnlab.generate.chat import ChatSession
from attnlab.models import build
from tests.generate._chat import CONVERSATIONS, chat_model, chat_tokenizer, conversation

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=16)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return chat_tokenizer()


@pytest.fixture(scope="module")
def model():
    return chat_model()


def _model(tok: Tokenizer, block_size: int):
    """A random tiny decoder (for the length checks, where what it says does not matter)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, d_model=32)
    return build(cfg).eval()


def _continuation(model, ids: list[int], cfg: SamplingConfig = GREEDY) -> list[int]:
    return generate(model, torch.tensor([ids]), sampling=cfg)[0, len(ids):].tolist()


def _expected(model, tok, ids: list[int], stop_ids, template: ChatTemplate, cfg: SamplingConfig = GREEDY) -> str:
    """What a reply must be: generate on ``ids``, cut at the first stop id, then at an end-of-turn string."""
    out = _continuation(model, ids, cfg)
    cut = next((i for i, t in enumerate(out) if t in stop_ids), len(out))
    return template.cut_reply(tok.decode(out[:cut])).lstrip()


@pytest.mark.parametrize("first", [conv[0][0] for conv in CONVERSATIONS])
def test_greedy_reply_is_generate_cut_at_the_stop_id(model, tok, first):
    tpl = ChatTemplate.default()
    chat = ChatSession(model, tok, tpl, GREEDY)
    assert chat.stop_ids == {tok.token_id(IM_END), tok.eos_id}
    pieces: list[str] = []
    answer = chat.reply(first, on_text=pieces.append)
    ids = encode_prompt(tok, tpl, [{"role": "user", "content": first}])
    assert chat.last_prompt_ids == ids
    gen = _continuation(model, ids)
    assert tok.token_id(IM_END) in gen  # the trained model ends its turn: the cut is real
    assert answer == tok.decode(gen[:gen.index(tok.token_id(IM_END))]).lstrip() and answer
    assert answer == _expected(model, tok, ids, chat.stop_ids, tpl)
    assert "".join(pieces) == answer and IM_END not in answer
    assert chat.history == [{"role": "user", "content": first}, {"role": "assistant", "content": answer}]


def test_a_stop_token_ends_the_reply_even_when_its_text_never_shows(model, tok):
    """The template's stop ids end a reply by id: a byte-level token string (``Ġto``) never appears in the text."""
    msgs = [{"role": "user", "content": "My name is Ann."}]
    ids = encode_prompt(tok, ChatTemplate.default(), msgs)
    gen = _continuation(model, ids)
    text = tok.decode(gen)
    k = next(i for i, t in enumerate(gen) if i > 0 and tok.backend.id_to_token(t) not in text)
    tpl = ChatTemplate(DEFAULT_TEMPLATE, eos_token=IM_END, end_of_turn=(IM_END, tok.backend.id_to_token(gen[k])))
    chat = ChatSession(model, tok, tpl, GREEDY)
    assert chat.reply("My name is Ann.") == tok.decode(gen[:k]).lstrip()


def test_plain_template_reply_ends_at_a_newline(model, tok):
    tpl = ChatTemplate.plain()
    chat = ChatSession(model, tok, tpl, GREEDY)
    answer = chat.reply("Hello there")
    ids = tok.encode(tpl.render([{"role": "user", "content": "Hello there"}], add_generation_prompt=True))
    assert chat.last_prompt_ids == ids
    text = tok.decode(_continuation(model, ids))
    assert "\n" in text.strip(" ")  # the reply ends at a newline, not at max_new_tokens
    assert answer == tpl.cut_reply(text).lstrip() and answer and "\n" not in answer
    assert answer == _expected(model, tok, ids, chat.stop_ids, tpl)
    # the reply is kept without the separator the template adds: rendering it again gives what the model saw
    assert tpl.render(chat.history).startswith(tok.decode(ids) + " " + answer)


def test_the_second_reply_sees_the_first_turn(model, tok):
    tpl = ChatTemplate.default()
    question = "What is my name?"
    prompts, replies = {}, {}
    for first in ("My name is Ann.", "My name is Bob."):
        chat = ChatSession(model, tok, tpl, GREEDY)
        a1 = chat.reply(first)
        a2 = chat.reply(question)
        history = [*conversation([(first, a1)]), {"role": "user", "content": question}]
        assert chat.last_prompt_ids == encode_prompt(tok, tpl, history)
        text = tok.decode(chat.last_prompt_ids)
        assert first in text and a1 in text and question in text
        assert a2 == _expected(model, tok, chat.last_prompt_ids, chat.stop_ids, tpl)
        prompts[first], replies[first] = chat.last_prompt_ids, a2
    assert prompts["My name is Ann."] != prompts["My name is Bob."]
    assert replies["My name is Ann."] != replies["My name is Bob."]  # the same question, answered per the first turn


def test_sampled_replies_use_seed_plus_turn_and_reset_starts_over(model, tok):
    tpl = ChatTemplate.default()
    cfg = SamplingConfig(temperature=1.0, top_k=20, seed=7, max_new_tokens=8)
    chat = ChatSession(model, tok, tpl, cfg)
    a1 = chat.reply("Hello there")
    a2 = chat.reply("how are you today?")
    assert a1 == _expected(model, tok, encode_prompt(tok, tpl, [{"role": "user", "content": "Hello there"}]),
                           chat.stop_ids, tpl, cfg)
    assert a2 == _expected(model, tok, chat.last_prompt_ids, chat.stop_ids, tpl,
                           SamplingConfig(temperature=1.0, top_k=20, seed=8, max_new_tokens=8))
    chat.reset()
    assert chat.history == [] and chat.reply("Hello there") == a1


def test_history_is_trimmed_oldest_pairs_first_and_says_so(tok):
    model = _model(tok, block_size=64)
    tpl = ChatTemplate.default()
    seen: list[str] = []
    system = "Be brief."
    chat = ChatSession(model, tok, tpl, SamplingConfig(temperature=0.0, max_new_tokens=6), system=system,
                       on_notice=seen.append)
    budget = 64 - 6
    sys_ids = tok.encode(tpl.render([{"role": "system", "content": system}]))
    trimmed = 0
    for i in range(8):
        before = list(chat.history)
        user = CONVERSATIONS[i % 4][i % 2][0]
        chat.reply(user)
        assert len(chat.last_prompt_ids) <= budget
        assert chat.last_prompt_ids[:len(sys_ids)] == sys_ids  # the system prompt is never dropped
        kept = chat.history[:-2]
        dropped = (len(before) - len(kept)) // 2
        assert before[len(before) - len(kept):] == kept  # a suffix: the oldest pairs went
        if dropped:
            trimmed += 1
            assert seen[-1].startswith(f"history trimmed: dropped {dropped} oldest turn")
            assert f"to fit {budget} tokens" in seen[-1]
            # minimal: keeping one more pair would not have fit
            one_more = [{"role": "system", "content": system}, *before[len(before) - len(kept) - 2:],
                        {"role": "user", "content": user}]
            assert len(encode_prompt(tok, tpl, one_more)) > budget
    assert trimmed >= 1 and len(seen) == trimmed == len(chat.notices)


def test_a_turn_that_cannot_fit_is_one_line(tok):
    model = _model(tok, block_size=32)
    chat = ChatSession(model, tok, ChatTemplate.default(), SamplingConfig(temperature=0.0, max_new_tokens=8))
    chat.reply("Hi")
    history = list(chat.history)
    with pytest.raises(AttnlabError) as e:
        chat.reply("The quick brown fox jumps over the lazy dog. " * 4)
    msg = str(e.value)
    assert "\n" not in msg and "context of 32" in msg and "leaves 24" in msg
    assert chat.history == history  # nothing added, nothing dropped


def test_bad_settings_are_refused(model, tok):
    tpl = ChatTemplate.default()
    with pytest.raises(AttnlabError, match="max_new_tokens 128 leaves no room"):
        ChatSession(model, tok, tpl, SamplingConfig(max_new_tokens=128))
    with pytest.raises(AttnlabError, match="beam search"):
        ChatSession(model, tok, tpl, SamplingConfig(num_beams=2, temperature=0.0))
    assert ChatSession(model, tok, tpl).max_new_tokens == 64  # default: half the context of 128
