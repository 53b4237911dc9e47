"""Autoregressive decoding: greedy, temperature, top-k, top-p, with a KV cache; ``generate`` also
dispatches to beam search.

The decoding options are one :class:`~attnlab.generate.config.SamplingConfig`, passed as
``sampling=`` and/or as keyword arguments naming its fields (``generate(model, ids, 20, temperature=0.8)``);
keyword arguments replace the config's fields, and the result is validated once, by the config.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn

from attnlab.generate.beam import beam_search
from attnlab.generate.config import SamplingConfig, SamplingError
from attnlab.generate.processors import apply_repetition_penalty, ends_with_stop, stop_tensors
from attnlab.generate.session import Session, eval_mode


class StepDecoder(Protocol):
    """What ``decoder=`` takes: an object that runs a decoding session of its ``model`` its own way
    (:class:`~attnlab.generate.fast.FastDecoder`: a static KV cache and a compiled step)."""

    model: nn.Module

    def session(self, input_ids: torch.Tensor, max_new_tokens: int, *,
                attention_mask: torch.Tensor | None = None) -> Session:
        """A :class:`~attnlab.generate.session.Session` whose model calls go to this decoder."""
        ...


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
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
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick the next token per row from (B, V) logits; temperature 0 is greedy. Returns (B,)."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def _steps(session: Session, max_new_tokens: int, cfg: SamplingConfig,
           eos_token_id: int | None) -> Iterator[torch.Tensor]:
    """Pick, append and yield one (B,) token per step until done."""
    device = session.tokens.device
    generator = None if cfg.seed is None else torch.Generator(device=device).manual_seed(cfg.seed)
    stop = stop_tensors(cfg.stop)
    done = torch.zeros(session.tokens.size(0), dtype=torch.bool, device=device)
    with eval_mode(session.model):
        for _ in range(max_new_tokens):
            logits = session.next_logits()  # (B, V)
            logits = apply_repetition_penalty(logits, session.tokens, cfg.repetition_penalty, session.padding)
            tok = next_token(logits, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                             generator=generator)
            if eos_token_id is not None:
                tok = torch.where(done, torch.full_like(tok, eos_token_id), tok)
                done |= tok == eos_token_id
            session.append(tok)
            if stop:
                done |= ends_with_stop(session.generated, stop)
            yield tok
            if (eos_token_id is not None or stop) and bool(done.all()):
                break


def _session(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, attention_mask: torch.Tensor | None,
             use_cache: bool, decoder: StepDecoder | None) -> Session:
    """The decoding session: the model's own cache, or ``decoder``'s (a static cache and compiled step)."""
    with eval_mode(model), torch.no_grad():
        if decoder is None:
            return Session(model, input_ids, max_new_tokens, attention_mask=attention_mask, use_cache=use_cache)
        if decoder.model is not model:
            raise ValueError("decoder= is a FastDecoder of another model; build it with FastDecoder(model, ...)")
        return decoder.session(input_ids, max_new_tokens, attention_mask=attention_mask)


def _resolve(input_ids: torch.Tensor, max_new_tokens: int | None, sampling: SamplingConfig | None,
            eos_token_id: int | None, options: dict[str, Any]) -> tuple[SamplingConfig, int]:
    """The call's validated options and token budget (see :func:`generate`).

    Raises:
        SamplingError: a bad option, or no ``max_new_tokens`` anywhere.
        ValueError: stop sequences over several rows without ``eos_token_id``.
    """
    cfg = (sampling or SamplingConfig()).with_options(**options)
    n = max_new_tokens if max_new_tokens is not None else cfg.max_new_tokens
    if n is None:
        raise SamplingError("max_new_tokens", "is required: pass generate(model, input_ids, max_new_tokens) or "
                            "SamplingConfig(max_new_tokens=...)")
    rows = input_ids.size(0) if input_ids.dim() == 2 else 1
    if cfg.stop and rows > 1 and eos_token_id is None:
        raise ValueError("stop sequences with several rows need eos_token_id to pad the rows that stopped early; "
                         "pass eos_token_id")
    return cfg, n


def stream(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int | None = None,
    *,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    attention_mask: torch.Tensor | None = None,
    decoder: StepDecoder | None = None,
    **options: Any,
) -> Iterator[torch.Tensor]:
    """Yield the next (B,) tokens one step at a time (same arguments as :func:`generate`).

    For an encoder–decoder the decoder start token is not yielded. Rows that emitted
    ``eos_token_id`` (or completed a ``stop`` sequence) keep yielding ``eos_token_id``; the
    iterator stops once every row has finished or
    ``max_new_tokens`` were produced. Input is checked (and a source encoded) at the call,
    not at the first token.

    Raises:
        ValueError: ``num_beams > 1`` (beam search only knows its tokens at the end), or
            bad input as in :func:`generate`.
    """
    cfg, n = _resolve(input_ids, max_new_tokens, sampling, eos_token_id, options)
    if cfg.num_beams != 1:
        raise ValueError(f"stream() yields greedy or sampled tokens one step at a time and cannot run beam search "
                         f"(num_beams={cfg.num_beams}); use generate(..., num_beams={cfg.num_beams})")
    session = _session(model, input_ids, n, attention_mask, use_cache, decoder)
    return _steps(session, n, cfg, eos_token_id)


def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int | None = None,
    *,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    attention_mask: torch.Tensor | None = None,
    decoder: StepDecoder | None = None,
    **options: Any,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens: greedy, sampled, or by beam search.

    Works with decoder-only LMs (the output continues the prompt) and with models that
    follow the encoder–decoder protocol (``is_encoder_decoder``: ``input_ids`` is the
    source, the output is the decoder sequence starting with ``model.decoder_start_id``);
    see :mod:`attnlab.generate.session`.

    Args:
        model: a decoder-only LM or an encoder–decoder.
        input_ids: (B, T) prompt ids (decoder-only; rows of different lengths are
            left-padded, see ``attention_mask``) or source ids.
        max_new_tokens: how many tokens to add at most (0: none); None: ``sampling.max_new_tokens``.
        sampling: the decoding options (:class:`~attnlab.generate.config.SamplingConfig`);
            default: sampling at temperature 1, no beams.
        eos_token_id: a row (beam) finishes when it emits this token; shorter outputs
            are padded with it.
        use_cache: decode with a KV cache / recurrent state (same tokens, much faster).
        attention_mask: (B, S) 1/0 source padding mask (encoder–decoders), or (B, T) 1/0
            mask of left-padded prompts (decoder-only :class:`~attnlab.models.DecoderLM`):
            padding is never attended to and each row's positions start at its first real
            token, so every row decodes as it would alone. The padding stays in the output.
        decoder: a :class:`~attnlab.generate.FastDecoder` of ``model`` to run on (static
            KV cache, compiled decode step); greedy / sampling only. The same tokens as
            without it.
        **options: fields of :class:`~attnlab.generate.config.SamplingConfig`, replacing
            those of ``sampling``:

            - ``temperature`` (1.0): softmax temperature; ``0`` means greedy (argmax). Beam
              search is deterministic and accepts only the defaults 1 (or 0).
            - ``top_k`` / ``top_p``: sample only among the k most likely tokens / from the
              nucleus of probability mass p (not with beams).
            - ``seed``: seeds sampling for reproducible output.
            - ``num_beams`` (1): beam search width; 1 is greedy / sampling.
            - ``length_penalty`` (1.0): beam search ranks finished sequences by
              ``sum log p / n ** length_penalty`` (n: generated tokens, EOS included);
              > 0 favours longer ones, 0 ranks by total log-probability.
            - ``early_stopping`` (True): beam search stops a row once ``num_beams`` sequences
              finished; ``False``: once the best running beam, scored at its current length,
              cannot beat the worst of them (transformers' heuristic); ``"never"``: once no
              running beam can, whatever its future length.
            - ``num_return_sequences`` (1): best beams returned per row (≤ ``num_beams``), best first.
            - ``repetition_penalty`` (1.0): CTRL's penalty on tokens already in the row (prompt
              included, padding excluded): positive logits are divided by it, negative ones
              multiplied (before temperature / filtering; beam search applies it to the
              log-probabilities, as transformers does). 1 is off; must be > 0.
            - ``stop``: token-id stop sequences (greedy / sampling only): a row finishes once
              its generated tokens end with one of them (the stop tokens are kept) and is then
              padded with ``eos_token_id`` (required when B > 1).

    Returns:
        Decoder-only: (B · num_return_sequences, T + n) ids, prompt included;
        encoder–decoder: (B · num_return_sequences, 1 + n) decoder ids, start token first.
        n ≤ ``max_new_tokens`` (less when every row ended with EOS); returned sequences of
        one input row are consecutive.

    Raises:
        SamplingError: a bad option (a ConfigError and a ValueError), see
            :class:`~attnlab.generate.config.SamplingConfig`.
        TypeError: an option that is not a SamplingConfig field.
        ValueError: empty input, a sequence longer than the model's context, a mask that is
            not left padding or that the model cannot honour, beam search with ``decoder``.
    """
    cfg, n = _resolve(input_ids, max_new_tokens, sampling, eos_token_id, options)
    if cfg.num_beams > 1:
        if decoder is not None:
            raise ValueError("the fast decode path (decoder=FastDecoder) does not run beam search; drop decoder= "
                             "to use num_beams")
        sequences, _ = beam_search(model, input_ids, n, num_beams=cfg.num_beams, length_penalty=cfg.length_penalty,
                                   early_stopping=cfg.early_stopping, num_return_sequences=cfg.num_return_sequences,
                                   eos_token_id=eos_token_id, use_cache=use_cache, attention_mask=attention_mask,
                                   repetition_penalty=cfg.repetition_penalty)
        return sequences
    session = _session(model, input_ids, n, attention_mask, use_cache, decoder)
    for _ in _steps(session, n, cfg, eos_token_id):
        pass
    return session.tokens
