"""Fast decoding: a preallocated (static) KV cache and a compiled decode step, prefill apart from decode.

The plain path (:func:`~attnlab.generate.generate`) grows its cache by concatenation, so
every step has new shapes. Here the cache is a :class:`~attnlab.attention.cache.StaticKVCache`
of ``max_len`` slots per row whose write offset lives on the device: a decode step has
the same shapes at every position and never reads back to the host, so
``torch.compile`` builds it once (``mode="reduce-overhead"`` on CUDA also captures it in
a CUDA graph and replays it). The prompt is prefilled eagerly, in one forward pass.

- :class:`FastDecoder` — ``prefill(input_ids)`` then ``decode_step(tokens)``, reusable
  across prompts of the same batch size (the compiled step is built once per decoder).
- ``generate(model, ..., decoder=fast)`` / ``stream(..., decoder=fast)`` run on a
  :class:`FastDecoder` (:meth:`FastDecoder.generate`/:meth:`~FastDecoder.stream` are those calls;
  :func:`fast_generate` builds a one-off decoder): the same tokens as without it for greedy
  decoding (sampling, EOS, stop sequences and the repetition penalty are the same code).

Decoder-only softmax-attention models only (:meth:`~attnlab.models.DecoderLM.make_static_cache`);
encoder–decoders, linear-attention mixers, RNNs and beam search are refused with a
ValueError, never silently run on the slow path. :attr:`FastDecoder.path` says what ran.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from attnlab.generate import sampling
from attnlab.generate.session import Session, is_encoder_decoder

logger = logging.getLogger("attnlab.generate")


def default_mode(device: torch.device | str) -> str:
    """The ``torch.compile`` mode for a decode step: CUDA graphs on CUDA, plain inductor elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


def check_fast_path(model: nn.Module) -> None:
    """Raise a one-line ValueError unless ``model`` can decode with a static cache.

    Raises:
        ValueError: an encoder–decoder, or a model without ``make_static_cache`` (RNNs).
    """
    if is_encoder_decoder(model):
        raise ValueError(f"the fast decode path is decoder-only; {type(model).__name__} is an encoder–decoder: "
                         "use generate() without compile")
    if not callable(getattr(model, "make_static_cache", None)):
        raise ValueError(f"{type(model).__name__} has no static KV cache (make_static_cache); the fast decode path "
                         "needs a decoder-only transformer: use generate() without compile")


class FastDecoder:
    """A static KV cache plus a decode step compiled once, for prompts of ``batch_size`` rows.

    Args:
        model: a decoder-only LM with ``make_static_cache`` (:class:`~attnlab.models.DecoderLM`),
            in eval mode for deterministic output (:meth:`generate` switches it).
        batch_size: rows per prompt batch (fixed: the compiled step is specialised on it).
        max_len: prompt + generated tokens per row, at most the model's context.
        compile: compile the decode step (False: the same static-cache step, eager).
        mode: ``torch.compile`` mode; default :func:`default_mode` of the model's device
            (``"reduce-overhead"`` = CUDA graphs on CUDA, ``"default"`` on CPU).

    Attributes:
        cache: the :class:`~attnlab.attention.cache.StaticKVCache`.
        path: what runs, e.g. ``"static-cache+compile(reduce-overhead)"`` or ``"static-cache+eager"``.
        compiles: graphs compiled by this decoder's step so far (1 after the first step; more
            means it recompiled).
        length: tokens in the cache (host-side count).

    Raises:
        ValueError: a model the fast path does not support (see :func:`check_fast_path`), a
            linear mixer, or ``max_len`` beyond the model's context.
    """

    def __init__(self, model: nn.Module, *, batch_size: int, max_len: int, compile: bool = True,
                 mode: str | None = None):
        check_fast_path(model)
        self.model = model
        self.cache = model.make_static_cache(batch_size, max_len)
        self.batch_size, self.max_len = batch_size, max_len
        device = self.cache.pos.device
        self.mode = (mode or default_mode(device)) if compile else None
        self.cudagraphs = compile and device.type == "cuda" and "reduce-overhead" in (self.mode or "")
        self.path = f"static-cache+compile({self.mode})" if compile else "static-cache+eager"
        self._step = (torch.compile(self._forward_step, mode=self.mode, fullgraph=True, dynamic=False)
                      if compile else self._forward_step)
        self._tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # (B, 1) the step's input
        torch._dynamo.mark_static_address(self._tokens)  # one address and stride every step
        self.compiles = 0
        self._calls = 0
        self.length = 0
        logger.info("generate: %s, batch %d x %d slots on %s", self.path, batch_size, max_len, device)

    def _forward_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1) tokens → (B, V) next-token logits; what gets compiled."""
        return self.model(tokens, cache=self.cache)[:, -1]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Start over with a prompt: one eager forward pass that fills the cache.

        Args:
            input_ids: (B, T) prompt ids, B = ``batch_size``, T < ``max_len``.
            attention_mask: (B, T) 1/0 mask of a left-padded prompt batch, or None.

        Returns:
            (B, V) logits for the token after the prompt.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != self.batch_size:
            raise ValueError(f"this FastDecoder takes (B, T) prompts with B = {self.batch_size}, "
                             f"got {tuple(input_ids.shape)}; build one per batch size")
        if input_ids.shape[1] > self.max_len:
            raise ValueError(f"prompt of {input_ids.shape[1]} tokens exceeds max_len={self.max_len}")
        self.cache.reset()
        self.length = 0
        logits = self.model(input_ids, cache=self.cache, attention_mask=attention_mask)[:, -1]  # (B, V)
        self.length = input_ids.shape[1]
        return logits

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; return (B, V) logits for the next.

        Args:
            tokens: (B,) or (B, 1) ids.

        Raises:
            ValueError: the cache is full, or no prompt was prefilled.
        """
        if self.length == 0:
            raise ValueError("call prefill(prompt) before decode_step()")
        if self.length >= self.max_len:
            raise ValueError(f"the static cache is full ({self.max_len} tokens per row); build a FastDecoder "
                             "with a larger max_len")
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        from torch._dynamo.utils import counters

        before = counters["stats"]["unique_graphs"]
        self._tokens.copy_(tokens.reshape(self.batch_size, 1))
        if self._calls < 2:  # compiling (and CUDA-graph recording) happens here
            logits = self._first_steps()
        else:
            logits = self._step(self._tokens)
        self._calls += 1
        new = counters["stats"]["unique_graphs"] - before
        if new and self.compiles:
            logger.warning("generate: the compiled decode step recompiled at length %d (%d graphs so far)",
                           self.length, self.compiles + new)
        self.compiles += new
        self.length += 1
        return logits.clone() if self.cudagraphs else logits  # a CUDA graph's output is overwritten by the next replay

    def _first_steps(self) -> torch.Tensor:
        """The step while it compiles; past dynamo's recompile limit it would silently run eager: raise instead."""
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                return self._step(self._tokens)
        except torch._dynamo.exc.FailOnRecompileLimitHit as e:
            limit = torch._dynamo.config.recompile_limit
            raise RuntimeError(f"the compiled decode step hit torch._dynamo.config.recompile_limit={limit} (each "
                               "FastDecoder adds one graph); reuse FastDecoders or raise the limit") from e

    def session(self, input_ids: torch.Tensor, max_new_tokens: int, *,
                attention_mask: torch.Tensor | None = None) -> StaticSession:
        """A decoding session on this decoder: what ``generate(..., decoder=self)`` runs (:class:`StaticSession`)."""
        return StaticSession(self, input_ids, max_new_tokens, attention_mask=attention_mask)

    def stream(self, input_ids: torch.Tensor, max_new_tokens: int | None = None,
               **kwargs: Any) -> Iterator[torch.Tensor]:
        """Yield the next (B,) tokens one step at a time: :func:`~attnlab.generate.stream` on this decoder."""
        return sampling.stream(self.model, input_ids, max_new_tokens, decoder=self, **kwargs)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """(B, T + n) ids, prompt included: :func:`~attnlab.generate.generate` on this decoder."""
        return sampling.generate(self.model, input_ids, max_new_tokens, decoder=self, **kwargs)


class StaticSession(Session):
    """A decoder-only :class:`~attnlab.generate.session.Session` whose model calls go to a :class:`FastDecoder`.

    The first :meth:`next_logits` prefills the prompt, later ones run the compiled step on the
    last token. Validation (shapes, left padding, context length) is the plain session's.
    """

    def __init__(self, decoder: FastDecoder, input_ids: torch.Tensor, max_new_tokens: int, *,
                 attention_mask: torch.Tensor | None = None):
        super().__init__(decoder.model, input_ids, max_new_tokens, attention_mask=attention_mask, use_cache=False)
        need = self.prefix_len + max(max_new_tokens - 1, 0)
        if need > decoder.max_len:
            raise ValueError(f"prompt of {self.prefix_len} tokens + {max_new_tokens} new tokens needs {need} cache "
                             f"slots, but this FastDecoder has max_len={decoder.max_len}")
        self.decoder = decoder

    def next_logits(self) -> torch.Tensor:
        if self.consumed == 0:
            logits = self.decoder.prefill(self.tokens, self.padding)
        else:
            logits = self.decoder.decode_step(self.tokens[:, -1])
        self.consumed = self.tokens.size(1)
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        raise ValueError("the fast decode path does not run beam search; use generate(..., num_beams=N)")


def fast_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *, compile: bool = True,
                  mode: str | None = None, **kwargs: Any) -> torch.Tensor:
    """:func:`~attnlab.generate.generate` (greedy or sampling) on the static-cache, compiled path.

    Builds a :class:`FastDecoder` for this batch (``max_len`` = prompt + ``max_new_tokens``)
    and runs it once; to amortise compilation over many calls, keep a :class:`FastDecoder`
    and pass it as ``generate(..., decoder=fast)`` (or call :meth:`FastDecoder.generate`).

    Args:
        model: a decoder-only softmax-attention LM.
        input_ids: (B, T) prompt ids.
        max_new_tokens: how many tokens to add at most.
        compile: compile the decode step (``False``: the static cache, eagerly).
        mode: ``torch.compile`` mode (default :func:`default_mode`).
        **kwargs: the other arguments of :func:`~attnlab.generate.generate` (``sampling=``, eos_token_id,
            attention_mask, and the sampling options: temperature, top_k, top_p, seed, repetition_penalty, stop).

    Returns:
        (B, T + n) ids, prompt included; greedy output equals ``generate(..., temperature=0)``.

    Raises:
        ValueError: what the fast path does not support (encoder–decoders, linear mixers,
            RNNs, beam search), or bad input as in :func:`~attnlab.generate.generate`.
    """
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be (B, T) with B >= 1 and T >= 1, got {tuple(input_ids.shape)}")
    decoder = FastDecoder(model, batch_size=input_ids.shape[0], max_len=input_ids.shape[1] + max(max_new_tokens, 0),
                          compile=compile, mode=mode)
    return decoder.generate(input_ids, max_new_tokens, **kwargs)
