"""Autoregressive decoding: greedy, temperature, top-k, top-p, with a KV cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
from torch import nn


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf.

    Args:
        logits: (B, V).
        top_k: keep the k largest per row.
        top_p: keep the smallest set of tokens whose probability sums to at least p.

    Returns:
        (B, V) filtered logits (the most likely token always survives).
    """
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p  # mass before this token already >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: Optional[int],
    top_p: Optional[float],
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """Pick the next token per row from (B, V) logits; temperature 0 is greedy. Returns (B,)."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _context_limit(model: nn.Module) -> Optional[int]:
    limit = getattr(model, "max_context", None)
    return limit if limit is not None else getattr(getattr(model, "config", None), "block_size", None)


@torch.no_grad()
def stream(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_token_id: Optional[int] = None,
    seed: Optional[int] = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next (B,) tokens one step at a time (same arguments as :func:`generate`).

    Rows that emitted ``eos_token_id`` keep yielding it; the iterator stops once every
    row has finished or ``max_new_tokens`` were produced.
    """
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(f"input_ids must be (B, T) with T >= 1, got {tuple(input_ids.shape)}")
    limit = _context_limit(model)
    if limit is not None and input_ids.size(1) + max_new_tokens > limit:
        raise ValueError(
            f"prompt of {input_ids.size(1)} tokens + {max_new_tokens} new tokens exceeds the model's "
            f"context of {limit}; shorten the prompt or ask for fewer tokens"
        )
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    cache = model.make_cache() if use_cache else None
    seq = input_ids
    done = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
    feed = input_ids
    try:
        for _ in range(max_new_tokens):
            logits = model(feed, cache=cache) if use_cache else model(seq)
            tok = next_token(logits[:, -1, :], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if eos_token_id is not None:
                tok = torch.where(done, torch.full_like(tok, eos_token_id), tok)
                done |= tok == eos_token_id
            yield tok
            seq = torch.cat((seq, tok[:, None]), dim=1)
            feed = tok[:, None]
            if eos_token_id is not None and bool(done.all()):
                break
    finally:
        model.train(was_training)


def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    num_beams: int = 1,
    eos_token_id: Optional[int] = None,
    seed: Optional[int] = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue ``input_ids`` by up to ``max_new_tokens`` tokens.

    Args:
        model: a decoder LM (``forward(ids, cache=...)`` → logits, ``make_cache()``).
        input_ids: (B, T) prompt ids (all rows the same length).
        max_new_tokens: how many tokens to add at most.
        temperature: softmax temperature; ``0`` means greedy (argmax).
        top_k: sample only among the k most likely tokens.
        top_p: sample only from the nucleus of probability mass p.
        num_beams: beam search width; only 1 (no beam search) is implemented so far.
        eos_token_id: stop a row when it emits this token (later positions repeat it).
        seed: seeds sampling for reproducible output.
        use_cache: decode with a KV cache (same result, much faster).

    Returns:
        (B, T + n) ids, prompt included.

    Raises:
        ValueError: prompt + new tokens longer than the context, or num_beams > 1.
    """
    if num_beams != 1:
        raise ValueError("beam search (num_beams > 1) is not implemented yet; use num_beams=1")
    tokens = list(stream(model, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_token_id=eos_token_id, seed=seed, use_cache=use_cache))
    if not tokens:
        return input_ids
    return torch.cat((input_ids, torch.stack(tokens, dim=1)), dim=1)
