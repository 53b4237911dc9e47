"""From a Hugging Face checkpoint to a chat model and back: a random tiny Llama saved with
``save_pretrained`` and its own chat template → ``attnlab finetune sft`` → ``attnlab chat``'s
session → ``attnlab convert`` → ``transformers`` greedily writes the same reply through
``apply_chat_template``."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.cli import main as cli
from attnlab.data.chat import ChatTemplate
from attnlab.data.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

# Llama-2's chat format: BOS, [INST] ... [/INST], the reply, EOS; roles must alternate.
LLAMA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'].strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

QA = [("What is your name?", "My name is Lab."), ("What colour is the sky?", "The sky is blue."),
      ("Say hello.", "Hello there."), ("What is two plus two?", "Two plus two is four.")]


def _hf_checkpoint(folder):
    texts = [q + " " + a for q, a in QA] * 30 + ["[INST] [/INST] colour name sky hello four"] * 10
    tok = Tokenizer.train_bpe(texts, 320, special_tokens=("<s>", "</s>", "<unk>"))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                   bos_token_id=tok.token_id("<s>"), eos_token_id=tok.token_id("</s>"))
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tok.save(folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": LLAMA_TEMPLATE}))
    return folder


@pytest.mark.slow
def test_llama_checkpoint_to_chat_and_back(tmp_path):
    from attnlab.finetune import load_finetuned
    from attnlab.generate.chat import ChatSession
    from attnlab.generate.config import SamplingConfig

    hf_dir = _hf_checkpoint(tmp_path / "hf")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 8))
    run = tmp_path / "sft"
    assert cli(["finetune", "sft", "sft-chat", "--no-progress", f"init=hf:{hf_dir}", f"data.train={data}",
                f"data.val={data}", f"data.test={data}",
                "train.max_steps=120", "train.lr=3e-3", "train.batch_size=8", "train.warmup_steps=5",
                "train.eval_every=60", "train.device=cpu", "train.dtype=float32", f"train.out_dir={run}"]) == 0

    # The run keeps the checkpoint's own template and tokens (nothing was added).
    saved = ChatTemplate.load(run / "model")
    assert saved.source == LLAMA_TEMPLATE and saved.eos_token == "</s>"
    _, model, tok = load_finetuned(run)
    assert tok.vocab_size == Tokenizer.load(hf_dir).vocab_size

    question = [{"role": "user", "content": "What colour is the sky?"}]
    session = ChatSession(model, tok, saved, SamplingConfig(max_new_tokens=12, temperature=0.0))
    reply = session.reply(question[0]["content"])
    assert reply.strip() == "The sky is blue."  # it learned the answer (and to stop)

    out = tmp_path / "exported"
    assert cli(["convert", str(run), str(out)]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    prompt = hf_tok.apply_chat_template(question, add_generation_prompt=True, tokenize=True, return_tensors="pt")
    if not isinstance(prompt, torch.Tensor):
        prompt = prompt["input_ids"]
    with torch.no_grad():
        ids = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12)
    new = ids[0, prompt.shape[1]:].tolist()
    assert new[-1] == hf_tok.eos_token_id  # the exported generation config stops at the end of the turn
    assert hf_tok.decode(new, skip_special_tokens=True).strip() == reply.strip()
