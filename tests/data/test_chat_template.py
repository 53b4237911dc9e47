"""Chat templates: our rendering and token ids equal transformers' apply_chat_template; assistant masks."""

from __future__ import annotations

import json

import pytest

from attnlab.data.chat import (
    IM_END,
    IM_START,
    ChatTemplate,
    add_chat_tokens,
    encode_conversation,
    encode_prompt,
)
from attnlab.data.chat_data import read_conversations, read_preferences
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError

# A ChatML template of the kind Qwen-style models ship: a default system turn when none is given.
CHATML_WITH_SYSTEM = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A Llama-2-style template: BOS, [INST] blocks, the system prompt folded into the first user turn,
# strict alternation enforced with raise_exception, EOS after every reply.
LLAMA_STYLE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Is the sky blue?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "写一首五言绝句。"},
    {"role": "assistant", "content": "床前明月光，疑是地上霜。"},
]


@pytest.fixture(scope="module")
def base_tok() -> Tokenizer:
    texts = ["Is the sky blue? Yes. Answer in one word. You are a helpful assistant.", "床前明月光，疑是地上霜。"] * 20
    return Tokenizer.train_bpe(texts, 400, special_tokens=("<|endoftext|>", "<s>", "</s>"))


def _templates() -> dict[str, ChatTemplate]:
    return {"default": ChatTemplate.default(),
            "chatml": ChatTemplate(CHATML_WITH_SYSTEM, eos_token=IM_END),
            "llama": ChatTemplate(LLAMA_STYLE, bos_token="<s>", eos_token="</s>")}


def _hf_ids(tok: Tokenizer, tpl: ChatTemplate, messages, add_generation_prompt: bool) -> list[int]:
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend, bos_token=tpl.bos_token,
                                              eos_token=tpl.eos_token)
    hf.chat_template = tpl.source
    out = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if not isinstance(out, list):
        out = out["input_ids"]
    return list(out)


@pytest.mark.parametrize("name", ["default", "chatml", "llama"])
@pytest.mark.parametrize("gen", [False, True])
def test_ids_equal_transformers(base_tok, name, gen):
    tpl = _templates()[name]
    tok = add_chat_tokens(base_tok, tpl)
    msgs = CONVERSATION if not gen else CONVERSATION[:4]
    ours = encode_prompt(tok, tpl, msgs) if gen else tok.encode(tpl.render(msgs))
    assert ours == _hf_ids(tok, tpl, msgs, gen)
    if not gen:
        ids, _ = encode_conversation(tok, tpl, msgs)
        assert ids == ours


def test_default_template_adds_special_tokens(base_tok):
    tok = add_chat_tokens(base_tok, ChatTemplate.default())
    assert tok.vocab_size == base_tok.vocab_size + 2
    for t in (IM_START, IM_END):
        assert tok.encode(t) == [tok.token_id(t)]
    assert ChatTemplate.default().stop_ids(tok) == [tok.token_id(IM_END)]
    llama = _templates()["llama"]
    assert add_chat_tokens(base_tok, llama) is base_tok  # its tokens are in the vocabulary already


@pytest.mark.parametrize("name", ["default", "chatml", "llama"])
def test_assistant_mask_covers_exactly_the_replies(base_tok, name):
    tpl = _templates()[name]
    tok = add_chat_tokens(base_tok, tpl)
    ids, mask = encode_conversation(tok, tpl, CONVERSATION)
    learned = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    end = IM_END if name != "llama" else "</s>"
    assert "Yes." in learned and "床前明月光" in learned and learned.count(end) == 2
    for other in ("sky", "Answer", "五言", "system", "[INST]"):
        assert other not in learned


def test_template_round_trips_through_tokenizer_config(tmp_path):
    tpl = _templates()["llama"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    tpl.save(tmp_path)
    back = ChatTemplate.load(tmp_path)
    assert back == tpl
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 64
    assert ChatTemplate.load(tmp_path / "missing") is None


def test_bad_templates_fail_with_one_line():
    with pytest.raises(AttnlabError, match="does not parse"):
        ChatTemplate("{% for m in messages %}")
    llama = _templates()["llama"]
    with pytest.raises(AttnlabError, match="failed to render: Conversation roles must alternate"):
        llama.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(AttnlabError, match="failed to render"):
        ChatTemplate("{{ messages[0]['content'].nosuch() }}").render([{"role": "user", "content": "a"}])


def test_sandbox_refuses_unsafe_templates():
    tpl = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(AttnlabError, match="failed to render"):
        tpl.render([{"role": "user", "content": "a"}])


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_three_conversation_shapes(tmp_path):
    f = _write(tmp_path / "c.jsonl", [
        {"messages": CONVERSATION, "task": "x"},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"instruction": "Translate", "input": "cat", "output": "Katze"},
    ])
    convs = read_conversations(f)
    assert convs[0].messages == CONVERSATION and convs[0].meta == {"task": "x"}
    assert convs[1].messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert convs[2].messages[0]["content"] == "Translate\n\ncat" and convs[2].messages[1]["content"] == "Katze"


@pytest.mark.parametrize("row, problem", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "line 2: the conversation has no assistant turn"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "line 2: message 1 has unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": 3}]}, "line 2: message 1 content must be a string"),
    ({"text": "hi"}, "line 2: no conversation found"),
])
def test_bad_conversations_name_file_and_line(tmp_path, row, problem):
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    f = _write(tmp_path / "c.jsonl", [good, row])
    with pytest.raises(AttnlabError, match=problem) as e:
        read_conversations(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_preferences(tmp_path):
    f = _write(tmp_path / "p.jsonl", [
        {"prompt": "Is it good?", "chosen": "positive", "rejected": "negative", "task": "s"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": {"role": "assistant", "content": "a"},
         "rejected": [{"role": "assistant", "content": "b"}]},
    ])
    pairs = read_preferences(f)
    assert pairs[0].prompt == [{"role": "user", "content": "Is it good?"}] and pairs[0].meta == {"task": "s"}
    assert (pairs[1].chosen, pairs[1].rejected) == ("a", "b")
    bad = _write(tmp_path / "b.jsonl", [{"prompt": "x", "chosen": "same", "rejected": "same"}])
    with pytest.raises(AttnlabError, match=r"b.jsonl line 1: 'chosen' equals 'rejected'"):
        read_preferences(bad)


def test_plain_template_and_template_for(tmp_path, base_tok):
    plain = ChatTemplate.plain()
    msgs = [{"role": "user", "content": "hi"}]
    assert plain.render(msgs, add_generation_prompt=True) == "User: hi\nAssistant:"
    assert plain.cut_reply(" hello\nUser: more") == " hello"
    ids, mask = encode_conversation(base_tok, plain, msgs + [{"role": "assistant", "content": "yo"}])
    assert base_tok.decode([i for i, m in zip(ids, mask, strict=True) if m]).strip() == "yo"
    from attnlab.data.chat import template_for

    assert template_for(None, base_tok) == plain
    assert template_for(tmp_path, add_chat_tokens(base_tok, ChatTemplate.default())) == ChatTemplate.default()
    llama = _templates()["llama"]
    llama.save(tmp_path)
    assert template_for(tmp_path, base_tok) == llama
