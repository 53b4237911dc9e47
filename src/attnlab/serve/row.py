"""One request's decoding state inside the scheduler's batch: its options checked again, its
seeded generator, its text stream, its sampling and its log-probabilities.

Everything here concerns one row, so the :class:`~attnlab.serve.batcher.Batcher` runs each
call under its own ``try``: whatever fails here fails that request alone.
"""

from __future__ import annotations

import dataclasses

import torch

from attnlab.data import Tokenizer
from attnlab.generate import SamplingError, apply_repetition_penalty, next_token
from attnlab.generate.text import TextStream
from attnlab.serve.job import Delta, Job, RequestError, Sampling, TokenLogprob

_PARAMS = {"max_new_tokens": "max_tokens"}
"""SamplingConfig field -> request field, where they differ."""


def check_options(opts: Sampling) -> None:
    """Check a job's options again: a handler's validation may have missed one.

    Raises:
        RequestError: 400 naming the field (a seed outside 0..2**63-1, a negative ``logprobs``, ...).
    """
    try:
        dataclasses.replace(opts.config)  # runs SamplingConfig's checks again (the seed's range among them)
    except SamplingError as e:
        param = _PARAMS.get(e.field, e.field)
        raise RequestError(400, f"'{param}' {e.problem}", param, "invalid_value") from None
    k = opts.logprobs
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise RequestError(400, f"'logprobs' must be an integer >= 0 (or null), got {k!r}", "logprobs",
                           "invalid_value")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in opts.stop_ids):
        raise RequestError(400, f"'stop_ids' must be token ids, got {opts.stop_ids!r}", "stop_ids", "invalid_value")
    if any(not isinstance(s, str) or not s for s in opts.stop):
        raise RequestError(400, f"'stop' must be non-empty strings, got {opts.stop!r}", "stop", "invalid_value")


def check_prompt(ids: list[int], max_tokens: int, context: int, vocab: int | None) -> None:
    """Check a job's prompt ids and length (a handler normally did): a bad one fails alone, not its batch.

    Raises:
        RequestError: 400: no ids, an id outside the vocabulary, ``max_tokens`` < 1, or more than the context.
    """
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 or (vocab and i >= vocab) for i in ids):
        known = f" in 0..{vocab - 1}" if vocab else ""
        raise RequestError(400, f"the prompt must be 1 or more token ids{known}; send a non-empty prompt of this "
                           "model's tokens", "prompt", "invalid_prompt")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(400, f"'max_tokens' must be an integer >= 1, got {max_tokens!r}", "max_tokens",
                           "invalid_value")
    if len(ids) + max_tokens > context:
        raise RequestError(400, f"the prompt is {len(ids)} tokens and max_tokens is {max_tokens}, but the model's "
                           f"context is {context} tokens; shorten the prompt or lower max_tokens to "
                           f"{max(context - len(ids), 0)}", "max_tokens", "context_length_exceeded")


def token_logprobs(tokenizer: Tokenizer, logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
    """``token``'s log-probability under the raw (V,) ``logits`` (fp32 ``log_softmax``) and the ``k``
    most likely tokens, best first."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # (V,)
    values, ids = lp.topk(min(k, lp.numel()))  # (k,) each, best first
    top = [(i, tokenizer.decode([i]), v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return TokenLogprob(token, tokenizer.decode([token]), float(lp[token]), top)


class Row:
    """A running job's decoding state.

    Args:
        job: the request.
        tokenizer: decodes its tokens.
        device: where its generator lives.
        context: the model's context (prompt + new tokens at most).

    Attributes:
        steps: tokens picked so far.
        error: set once this row failed; the batcher ends it at its next check.

    Raises:
        RequestError: an option or the prompt out of range (400), see :func:`check_options`, :func:`check_prompt`.
    """

    def __init__(self, job: Job, tokenizer: Tokenizer, device: torch.device, context: int):
        check_prompt(job.ids, job.max_tokens, context, getattr(tokenizer, "vocab_size", None))
        check_options(job.opts)
        self.job, self.tokenizer = job, tokenizer
        self.text = TextStream(tokenizer, job.opts.stop, tokenizer.eos_id, stop_ids=job.opts.stop_ids)
        seed = job.opts.config.seed
        self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        self.steps = 0
        self.error: RequestError | None = None
        self._candidate: TokenLogprob | None = None  # the logprobs of the token just picked

    def pick(self, logits: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor | None) -> int:
        """The next token from this row's (1, V) logits, with its own penalty, temperature, top-p
        and generator; with ``opts.logprobs``, its log-probabilities are kept for :meth:`push`.

        Args:
            logits: (1, V) the model's raw logits for this row.
            tokens: (1, T) the row's sequence so far (left padding included).
            valid: (1, T) its real-token mask, or None without padding.
        """
        o = self.job.opts.config
        penalised = apply_repetition_penalty(logits, tokens, o.repetition_penalty, valid)  # (1, V)
        token = int(next_token(penalised, temperature=o.temperature, top_k=o.top_k, top_p=o.top_p,
                               generator=self.generator))
        if self.job.opts.logprobs is not None:
            self._candidate = token_logprobs(self.tokenizer, logits[0], token, self.job.opts.logprobs)
        return token

    def push(self, token: int) -> Delta | None:
        """Detokenize the new token: a delta with the text that became safe to show and the token's
        logprobs (even when its text is still held back), or None when there is neither. A token
        that ends the reply (EOS, a stop id) is not reported."""
        counted = self.text.n_tokens
        piece = self.text.push(token)
        reported = [self._candidate] if self._candidate is not None and self.text.n_tokens > counted else []
        self._candidate = None
        return Delta(piece, reported) if piece or reported else None

    @property
    def done(self) -> bool:
        """It reached EOS, a stop id, a stop string or ``max_tokens``."""
        return self.text.finished or self.steps >= self.job.max_tokens

    def flush(self) -> Delta | None:
        """The text held back to the end, as a last delta (None if there is none)."""
        rest = self.text.flush()
        return Delta(rest) if rest else None


__all__ = ["Row", "check_options", "check_prompt", "token_logprobs"]
