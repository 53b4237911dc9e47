"""A tiny decoder trained for a second or two on four two-turn conversations (ChatML and plain text), so that
its replies are real text, end with <|im_end|> (or a newline) and depend on the first turn; and a run folder
of it that ``attnlab chat`` loads."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from attnlab.config import ModelConfig
from attnlab.data.chat import ChatTemplate, Message, add_chat_tokens
from attnlab.data.tokenizer import Tokenizer
from attnlab.models import build

CONVERSATIONS = [
    [("Hello there", "Hi! How are you?"), ("What is my name?", "You did not say.")],
    [("My name is Ann.", "Nice to meet you, Ann."), ("What is my name?", "Your name is Ann.")],
    [("My name is Bob.", "Nice to meet you, Bob."), ("What is my name?", "Your name is Bob.")],
    [("I like tea.", "Tea is nice."), ("What do I like?", "You like tea.")],
]
TEMPLATES = (ChatTemplate.default(), ChatTemplate.plain())
MODEL = ModelConfig(vocab_size=0, block_size=128, n_layer=2, n_head=2, d_model=32)


def conversation(pairs: list[tuple[str, str]]) -> list[Message]:
    """``[(user, assistant), ...]`` as messages."""
    out: list[Message] = []
    for user, assistant in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


@functools.cache
def chat_tokenizer() -> Tokenizer:
    """A byte-level BPE of the conversations' words, with <|im_start|>/<|im_end|> as special tokens."""
    words = [f"{u} {a}" for conv in CONVERSATIONS for u, a in conv] + ["user assistant User: Assistant:"]
    base = Tokenizer.train_bpe(words * 10, 300, special_tokens=("<|endoftext|>",))
    return add_chat_tokens(base, ChatTemplate.default())


def model_config() -> ModelConfig:
    return dataclasses.replace(MODEL, vocab_size=chat_tokenizer().vocab_size)


@functools.cache
def _trained_weights() -> dict[str, torch.Tensor]:
    tok = chat_tokenizer()
    seqs = [tok.encode(tpl.render(conversation(conv))) for conv in CONVERSATIONS for tpl in TEMPLATES]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])  # (B, T) right-padded
    targets = torch.tensor([s[1:] + [-100] * (width - len(s) + 1) for s in seqs])  # (B, T), padding ignored
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build(model_config())
        opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
        for _ in range(200):
            loss = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), ignore_index=-100)  # (B*T, V)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def chat_model() -> torch.nn.Module:
    """A fresh copy of the trained model (eval mode)."""
    model = build(model_config())
    model.load_state_dict(_trained_weights())
    return model.eval()


def save_run(folder: Path) -> Path:
    """Write the trained model as a run folder of ``attnlab train`` (one checkpoint, with its tokenizer)."""
    from attnlab import config
    from attnlab.train.checkpoint import save_checkpoint

    tok_file = chat_tokenizer().save(folder.parent / f"{folder.name}-tokenizer.json")
    cfg = dataclasses.replace(config.load("gpt-tiny"), model=model_config())
    save_checkpoint(folder, 150, chat_model(), cfg, state={}, tokenizer_file=tok_file, log=lambda s: None)
    return folder
