"""One loaded decoder-only model, its chat template and its scheduler: prompts in, jobs out.

:meth:`Engine.completion_ids` and :meth:`Engine.chat_ids` turn a request's prompt into token
ids (a chat through the checkpoint's template, whose own text carries any BOS it wants, as in
``transformers``' ``apply_chat_template``); :meth:`Engine.prepare` checks them against the
limits; :meth:`Engine.submit` hands them to the :class:`~attnlab.serve.batcher.Batcher`,
which decodes concurrent requests together and sends each job its text deltas.

A completion stops at every EOS id (the tokenizer's ``<|endoftext|>`` and the template's
``eos_token``: :attr:`Engine.completion_stop_ids`); a chat reply also at the template's
end-of-turn tokens (:attr:`Engine.chat_stop_ids`) and at its end-of-turn strings that are no
single token (:attr:`Engine.chat_stop_strings`: the plain ``User:``/``Assistant:`` template ends
a reply at a newline, as ``attnlab chat`` does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attnlab.data import Tokenizer
from attnlab.data.chat import ChatTemplate, template_for
from attnlab.data.tokenizer import byte_to_char
from attnlab.errors import AttnlabError
from attnlab.generate import is_encoder_decoder
from attnlab.serve.batcher import BatchConfig, Batcher
from attnlab.serve.job import Event, Job, RequestError, Sampling


class Engine:
    """A decoder-only LM, its tokenizer and chat template, and the batching worker that owns them.

    Args:
        model: a decoder-only LM in eval mode (``max_context`` attribute).
        tokenizer: its tokenizer.
        device: where the model lives.
        name: the model id reported by the API.
        max_tokens_cap: the most tokens one request may ask for.
        batch: scheduling limits (batch size, gather window, concurrency, time limit).
        template: how chat messages become a prompt (None: :func:`~attnlab.data.chat.template_for`
            the tokenizer alone: ChatML when it has the tokens, else plain ``User:``/``Assistant:``).

    Raises:
        AttnlabError: the model is not a decoder-only LM, or a bad limit.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, device: torch.device, name: str,
                 max_tokens_cap: int = 512, batch: BatchConfig | None = None, template: ChatTemplate | None = None):
        if is_encoder_decoder(model) or not hasattr(model, "max_context"):
            raise AttnlabError(f"attnlab serve needs a decoder-only LM, got {type(model).__name__}; "
                               "serve a checkpoint trained with model.arch=decoder")
        if max_tokens_cap < 1:
            raise AttnlabError(f"--max-tokens-cap must be positive, got {max_tokens_cap}")
        self.model, self.tokenizer, self.device, self.name = model, tokenizer, device, name
        self.max_tokens_cap = max_tokens_cap
        self.context = int(model.max_context)
        self.template = template if template is not None else template_for(None, tokenizer)
        eos = {tokenizer.eos_id, tokenizer.token_id(self.template.eos_token) if self.template.eos_token else None}
        self.completion_stop_ids = sorted(int(i) for i in eos if i is not None)
        self.chat_stop_ids = sorted(set(self.completion_stop_ids) | set(self.template.stop_ids(tokenizer)))
        self.chat_stop_strings = [t for t in dict.fromkeys(self.template.end_of_turn) if tokenizer.token_id(t) is None]
        self.batch = batch or BatchConfig()
        self._closing = False
        self._bytes: dict[int, list[int]] = {}
        self._special = set(tokenizer.special_ids)
        try:
            self.batcher = Batcher(model, tokenizer, device, self.batch)
        except ValueError as e:
            raise AttnlabError(f"bad serving limit: {e}") from None

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called (the server is shutting down)."""
        return self._closing

    @property
    def healthy(self) -> bool:
        """Whether requests can be served: the worker runs and :meth:`close` was not called."""
        return self.batcher.alive and not self._closing

    # --- prompts --------------------------------------------------------------------------
    def completion_ids(self, prompt: str) -> list[int]:
        """Token ids of a ``/v1/completions`` prompt (no special tokens added)."""
        return self.tokenizer.encode(prompt)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered with the chat template, ending with the assistant's opening.

        Raises:
            RequestError: the template refuses the conversation (e.g. roles out of order) (400).
        """
        try:
            text = self.template.render(messages, add_generation_prompt=True)
        except AttnlabError as e:
            raise RequestError(400, f"'messages': {e}", "messages", "invalid_value") from None
        return self.tokenizer.encode(text)

    def prepare(self, ids: list[int], opts: Sampling, param: str = "prompt") -> int:
        """The number of tokens to generate for prompt ``ids``, checked against the cap and the context.

        Args:
            ids: prompt token ids.
            opts: the request's options (``max_tokens``).
            param: the request field holding the prompt (``prompt`` or ``messages``), named in errors.

        Raises:
            RequestError: empty prompt, ``max_tokens`` over the cap, or prompt + ``max_tokens`` over the context (400).
        """
        if not ids:
            raise RequestError(400, f"the {param} encodes to no tokens; send a non-empty {param}", param,
                               "empty_prompt")
        if opts.max_tokens is not None and opts.max_tokens > self.max_tokens_cap:
            raise RequestError(400, f"'max_tokens' is {opts.max_tokens} but this server allows at most "
                               f"{self.max_tokens_cap}; lower it", "max_tokens", "max_tokens_exceeded")
        room = self.context - len(ids)
        if room < 1:
            raise RequestError(400, f"the {param} is {len(ids)} tokens but the model's context is {self.context} "
                               f"tokens, leaving no room for a reply; shorten the {param}", param,
                               "context_length_exceeded")
        want = opts.max_tokens if opts.max_tokens is not None else min(self.max_tokens_cap, room)
        if want > room:
            raise RequestError(400, f"the {param} is {len(ids)} tokens and max_tokens is {want}, but the model's "
                               f"context is {self.context} tokens; shorten the {param} or lower max_tokens to "
                               f"{room}", "max_tokens", "context_length_exceeded")
        return want

    def token_bytes(self, token: int) -> list[int]:
        """The UTF-8 bytes token ``token`` stands for (OpenAI's ``logprobs ... bytes``): exact for a byte-level
        token holding part of a character, where its text shows U+FFFD."""
        got = self._bytes.get(token)
        if got is None:
            piece = self.tokenizer.backend.id_to_token(token) or ""
            table = {c: b for b, c in byte_to_char().items()}
            if token in self._special or not all(c in table for c in piece):
                got = list(piece.encode("utf-8"))
            else:
                got = [table[c] for c in piece]
            self._bytes[token] = got
        return got

    # --- scheduling -----------------------------------------------------------------------
    def submit(self, ids: list[int], max_tokens: int, opts: Sampling,
               sink: Callable[[Event], None] | None = None) -> Job:
        """Queue a prepared request; its events go to ``sink`` (worker thread) or :meth:`Job.pieces`.

        Raises:
            RequestError: at the concurrency limit (429), shutting down or the worker stopped (503).
        """
        if self._closing:
            raise RequestError(503, "the server is shutting down; retry on another replica or later",
                               code="shutting_down")
        return self.batcher.submit(ids, max_tokens, opts, sink=sink)

    def stats(self) -> dict[str, int]:
        """The scheduler's counters (see :meth:`Batcher.stats`)."""
        return self.batcher.stats()

    def close(self, timeout: float = 30.0) -> bool:
        """Refuse new requests and let running ones finish for up to ``timeout`` s; True if all did."""
        self._closing = True
        return self.batcher.close(timeout)


__all__ = ["Engine"]
