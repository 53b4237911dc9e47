"""Joining a prefilled session into a running one, and trimming all-padding columns, keep
every row decoding as it would alone."""

from __future__ import annotations

import pytest
import torch

from attnlab.generate import Session, generate
from attnlab.serve.joining import can_join, join, trim


def left_padded(model, prompts: list[list[int]], n: int) -> Session:
    """A session over left-padded ``prompts`` (no mask when there is one)."""
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    return Session(model, ids, n, attention_mask=mask if len(prompts) > 1 else None)


def alone(model, prompt: list[int], n: int) -> list[int]:
    return generate(model, torch.tensor([prompt]), n, temperature=0.0)[0, len(prompt):].tolist()


@torch.no_grad()
def test_join_then_trim_matches_each_row_alone(serve_model):
    model, tok, _ = serve_model
    prompts = [tok.encode(t) for t in ("ROMEO:", "First Citizen:\nBefore we proceed", "O", "KING HENRY:")]
    running = left_padded(model, prompts[:1], 20)
    out: list[list[int]] = [[]]
    for _ in range(3):  # the first row decodes alone for 3 steps
        t = running.next_logits().argmax(-1)
        running.append(t)
        out[0].append(int(t[0]))
    logits = running.next_logits()
    new = left_padded(model, prompts[1:], 20)
    assert can_join(running) and can_join(new)
    logits = torch.cat((logits, new.next_logits()))
    join(running, new)
    out += [[], [], []]
    width = running.tokens.size(1)
    assert width == max(len(prompts[1]), len(prompts[0]) + 3) and running.padding.shape == (4, width)
    for step in range(8):
        t = logits.argmax(-1)
        running.append(t)
        for i, tok_id in enumerate(t.tolist()):
            out[i].append(tok_id)
        if step == 3:  # the long prompt leaves: its left columns were padding for everyone else
            running.reorder(torch.tensor([0, 2, 3]))
            out = [out[0], out[2], out[3]]
            prompts = [prompts[0], prompts[2], prompts[3]]
            before = running.tokens.size(1)
            trim(running)
            assert running.tokens.size(1) < before and bool(running.padding[:, 0].any())
            assert all(layer.k.size(-2) == running.consumed == running.tokens.size(1) - 1
                       for layer in running.cache.layers)
        logits = running.next_logits()
    for prompt, got in zip(prompts, out):
        assert got == alone(model, prompt, 20)[:len(got)]


def test_join_refuses_unfed_tokens(serve_model):
    model, tok, _ = serve_model
    a, b = (left_padded(model, [tok.encode(t)], 4) for t in ("ROMEO:", "O"))
    with pytest.raises(ValueError, match="next_logits"):
        join(a, b)
