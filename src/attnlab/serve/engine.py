"""One loaded decoder-only model and its scheduler: prompt text in, text pieces out.

:meth:`Engine.prepare` checks a prompt against the limits; :meth:`Engine.submit` hands it
to the :class:`~attnlab.serve.batcher.Batcher`, which decodes concurrent requests together
and sends each one its text deltas, trimmed at the first stop string; text that could
still grow into a stop string (or an unfinished multi-byte character) is held back until
it cannot, so streamed pieces concatenate to exactly the non-streamed text.
"""

from __future__ import annotations

import torch
from torch import nn

from attnlab.data import Tokenizer
from attnlab.errors import AttnlabError
from attnlab.generate import is_encoder_decoder
from attnlab.serve.batcher import BatchConfig, Batcher, Job
from attnlab.serve.protocol import RequestError, Sampling


class Engine:
    """A decoder-only LM, its tokenizer and the batching worker that owns them.

    Args:
        model: a decoder-only LM in eval mode (``max_context`` attribute).
        tokenizer: its tokenizer.
        device: where the model lives.
        name: the model id reported by the API.
        max_tokens_cap: the most tokens one request may ask for.
        batch: scheduling limits (batch size, gather window, concurrency, time limit).

    Raises:
        AttnlabError: the model is not a decoder-only LM, or a bad limit.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, device: torch.device, name: str,
                 max_tokens_cap: int = 512, batch: BatchConfig | None = None):
        if is_encoder_decoder(model) or not hasattr(model, "max_context"):
            raise AttnlabError(f"attnlab serve needs a decoder-only LM, got {type(model).__name__}; "
                               "serve a checkpoint trained with model.arch=decoder")
        if max_tokens_cap < 1:
            raise AttnlabError(f"--max-tokens-cap must be positive, got {max_tokens_cap}")
        self.model, self.tokenizer, self.device, self.name = model, tokenizer, device, name
        self.max_tokens_cap = max_tokens_cap
        self.context = int(model.max_context)
        self.batch = batch or BatchConfig()
        try:
            self.batcher = Batcher(model, tokenizer, device, self.batch)
        except ValueError as e:
            raise AttnlabError(f"bad serving limit: {e}") from None

    def prepare(self, prompt: str, opts: Sampling) -> tuple[list[int], int]:
        """Prompt ids and the number of tokens to generate, checked against the cap and the context.

        Raises:
            RequestError: empty prompt, ``max_tokens`` over the cap, or prompt + ``max_tokens`` over the context (400).
        """
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise RequestError(400, "the prompt encodes to no tokens; send a non-empty prompt", "prompt",
                               "empty_prompt")
        if opts.max_tokens is not None and opts.max_tokens > self.max_tokens_cap:
            raise RequestError(400, f"'max_tokens' is {opts.max_tokens} but this server allows at most "
                               f"{self.max_tokens_cap}; lower it", "max_tokens", "max_tokens_exceeded")
        room = self.context - len(ids)
        want = opts.max_tokens if opts.max_tokens is not None else min(self.max_tokens_cap, room)
        if want < 1 or want > room:
            raise RequestError(400, f"the prompt is {len(ids)} tokens and max_tokens is {want}, but the model's "
                               f"context is {self.context} tokens; shorten the prompt or lower max_tokens to "
                               f"{max(room, 0)}", "max_tokens", "context_length_exceeded")
        return ids, want

    def submit(self, ids: list[int], max_tokens: int, opts: Sampling) -> Job:
        """Queue a prepared request; iterate :meth:`Job.pieces` for its text deltas.

        Raises:
            RequestError: at the concurrency limit (429) or shutting down (503).
        """
        return self.batcher.submit(ids, max_tokens, opts)

    def stats(self) -> dict[str, int]:
        """The scheduler's counters (see :meth:`Batcher.stats`)."""
        return self.batcher.stats()

    def close(self, timeout: float = 30.0) -> bool:
        """Refuse new requests and let running ones finish for up to ``timeout`` s; True if all did."""
        return self.batcher.close(timeout)


__all__ = ["Engine"]
