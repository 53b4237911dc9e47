"""One decoding run, whatever the model family: the only place that tells them apart.

Two families decode token by token:

- decoder-only LMs (:class:`~attnlab.models.DecoderLM`, :class:`~attnlab.models.rnn.RNNLanguageModel`):
  ``model(ids, cache=...)``, ``model.make_cache()``, ``model.max_context``; the output
  continues the prompt.
- encoder–decoders (``model.is_encoder_decoder = True``): ``encode(input_ids, attention_mask)``
  → memory, ``make_cache(memory)``, ``decode(ids, cache=...)`` or ``decode(ids, memory=...)``,
  ``decoder_start_id``, ``max_context`` (decoder length); the output is the decoder's
  sequence, starting with ``decoder_start_id``.

Both are ``typing.Protocol``s in :mod:`attnlab.models.protocols` (:class:`~attnlab.models.protocols.CausalLM`,
:class:`~attnlab.models.protocols.EncoderDecoderLM`); what a signature cannot show is declared
by the model class (``is_encoder_decoder``, ``accepts_padding``), never sniffed.

A :class:`Session` hides the difference behind ``next_logits()`` (prefill the first time,
then one step), ``append(tokens)`` and ``reorder(index)`` (beam search). Decoder-only
sessions can also take the rows of another one between two steps (``join``, iteration-level
batching) and drop leading columns that became padding in every row (``trim``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models.protocols import accepts_padding, is_encoder_decoder


def context_limit(model: nn.Module) -> int | None:
    """The longest (decoder) sequence the model takes, if it has a limit."""
    limit = getattr(model, "max_context", None)
    return limit if limit is not None else getattr(getattr(model, "config", None), "block_size", None)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block in eval mode (no dropout), restoring the model's mode after.

    Gradients are turned off by ``@torch.no_grad()`` on the callers instead: on a generator
    it applies only while the generator runs, not while it is suspended.
    """
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _left_padding(model: nn.Module, attention_mask: torch.Tensor, *, decoder_prefix: bool = False) -> torch.Tensor:
    """Check a mask of decoder-side tokens (a decoder-only prompt, or an encoder–decoder's
    decoder prefix) is left padding the model can take; (B, T) bool."""
    name, what = ("decoder_attention_mask", "decoder prefixes") if decoder_prefix else ("attention_mask", "prompts")
    if not accepts_padding(model):
        raise ValueError(f"{type(model).__name__} does not take a padding {name} (it does not declare "
                         f"accepts_padding = True); generate {what} of equal length without one")
    valid = attention_mask.bool()
    if not bool(valid[:, -1].all()) or bool((valid[:, :-1] & ~valid[:, 1:]).any()):
        raise ValueError(f"{name} for {what} must be left padding (0s, then 1s, each row ending in a real token); "
                         f"pad {what} on the left")
    return valid


def _pad_left(x: torch.Tensor, width: int, value: float = 0) -> torch.Tensor:
    """(N, T) ``x`` left-padded with ``value`` to (N, width)."""
    return F.pad(x, (width - x.size(-1), 0), value=value)


class Session:
    """The tokens generated so far and whatever the model needs to continue them.

    Args:
        model: a decoder-only LM or an encoder–decoder (see the module docstring).
        input_ids: (B, T) prompt (decoder-only) or source (encoder–decoder) ids.
        max_new_tokens: tokens that will be added at most (checked against the context).
        attention_mask: (B, S) 1/0 source padding mask, left or right (encoder–decoders), or
            (B, T) 1/0 mask of a left-padded prompt batch (decoder-only models that declare
            ``accepts_padding = True``: :class:`~attnlab.models.DecoderLM`,
            :class:`~attnlab.models.rnn.RNNLanguageModel`). Either way each row generates
            what it would alone.
        use_cache: keep a KV cache / recurrent state; otherwise every step recomputes the
            whole (decoder) sequence from scratch. Both give the same tokens.
        decoder_input_ids: (B, T) forced decoder prefixes of an encoder–decoder (each row
            starting with ``decoder_start_id``), continued instead of the start token alone.
        decoder_attention_mask: (B, T) 1/0 mask of left-padded ``decoder_input_ids`` of
            different lengths; each row generates what it would alone.

    Attributes:
        tokens: (N, T) the sequence so far (prompt or start token first); N = B until
            :meth:`reorder` or :meth:`join` changes the rows.
        padding: (N, T) bool real-token mask of :attr:`tokens` (decoder-only with an
            ``attention_mask``, encoder–decoder with a ``decoder_attention_mask``, any
            session after :meth:`join`), else None.
        prefix_len: length of the part that was not generated (after :meth:`join`: all of
            the joined tokens).

    Raises:
        ValueError: malformed input, a decoder-side mask that is not left padding or for a
            model that cannot take one, or a sequence longer than the model's context.
    """

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                 attention_mask: torch.Tensor | None = None, use_cache: bool = True,
                 decoder_input_ids: torch.Tensor | None = None,
                 decoder_attention_mask: torch.Tensor | None = None):
        if input_ids.dim() != 2 or input_ids.size(0) == 0 or input_ids.size(1) == 0:
            raise ValueError(f"input_ids must be (B, T) with B >= 1 and T >= 1, got {tuple(input_ids.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.model = model
        self.encoder_decoder = is_encoder_decoder(model)
        self.use_cache = use_cache
        self.padding: torch.Tensor | None = None
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        if self.encoder_decoder:
            self.source, self.source_mask = input_ids, attention_mask
            self.rows = torch.arange(input_ids.size(0), device=input_ids.device)  # source row of each row
            self.memory: Any = model.encode(input_ids, attention_mask=attention_mask)
            self.tokens = self._decoder_prefix(model, input_ids.size(0), decoder_input_ids, decoder_attention_mask)
            self.cache = model.make_cache(self.memory) if use_cache else None
        else:
            if decoder_input_ids is not None or decoder_attention_mask is not None:
                raise ValueError("decoder_input_ids / decoder_attention_mask are for encoder–decoders; a decoder-only "
                                 "prompt goes in input_ids (with attention_mask)")
            if attention_mask is not None:
                self.padding = _left_padding(model, attention_mask)
            self.tokens = input_ids
            self.cache = model.make_cache() if use_cache else None
        self.prefix_len = self.tokens.size(1)
        self.consumed = 0  # tokens the cache has seen
        self._check_length(model, max_new_tokens)

    def _decoder_prefix(self, model: nn.Module, batch: int, ids: torch.Tensor | None,
                        mask: torch.Tensor | None) -> torch.Tensor:
        """The decoder tokens to continue: ``ids`` (checked, with their mask) or the start token."""
        if ids is None:
            if mask is not None:
                raise ValueError("decoder_attention_mask needs decoder_input_ids")
            return torch.full((batch, 1), model.decoder_start_id, dtype=torch.long, device=self.source.device)
        if ids.dim() != 2 or ids.size(0) != batch or ids.size(1) == 0:
            raise ValueError(f"decoder_input_ids must be (B, T) with the source's batch of {batch} and T >= 1, "
                             f"got {tuple(ids.shape)}")
        if mask is not None:
            if mask.shape != ids.shape:
                raise ValueError(f"decoder_attention_mask must have the shape of decoder_input_ids "
                                 f"{tuple(ids.shape)}, got {tuple(mask.shape)}")
            self.padding = _left_padding(model, mask, decoder_prefix=True)
        return ids

    def _check_length(self, model: nn.Module, max_new_tokens: int) -> None:
        limit = context_limit(model)
        if limit is None or self.prefix_len + max_new_tokens <= limit:
            return
        if self.encoder_decoder:
            prefix = "the decoder start token" if self.prefix_len == 1 else f"a decoder prefix of {self.prefix_len}"
            raise ValueError(f"{prefix} + {max_new_tokens} new tokens exceeds the model's decoder context of {limit}; "
                             f"ask for at most {limit - self.prefix_len} new tokens")
        raise ValueError(
            f"prompt of {self.prefix_len} tokens + {max_new_tokens} new tokens exceeds the model's "
            f"context of {limit}; shorten the prompt or ask for fewer tokens"
        )

    @property
    def generated(self) -> torch.Tensor:
        """(N, n) the tokens generated so far."""
        return self.tokens[:, self.prefix_len:]

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (N, T, V) of ``ids``: new tokens after the cache, or a whole sequence."""
        kwargs = {} if self.padding is None else {"attention_mask": self.padding}
        if self.encoder_decoder:
            if self.cache is not None:
                return self.model.decode(ids, cache=self.cache, **kwargs)
            return self.model.decode(ids, memory=self.memory, **kwargs)
        return self.model(ids, cache=self.cache, **kwargs) if self.cache is not None else self.model(ids, **kwargs)

    def next_logits(self) -> torch.Tensor:
        """(N, V) logits for the token after :attr:`tokens` (the first call is the prefill)."""
        if self.cache is None:
            return self._run(self.tokens)[:, -1]
        logits = self._run(self.tokens[:, self.consumed:])[:, -1]
        self.consumed = self.tokens.size(1)
        return logits

    def append(self, tokens: torch.Tensor) -> None:
        """Add one (N,) token per row."""
        self.tokens = torch.cat((self.tokens, tokens[:, None]), dim=1)
        if self.padding is not None:
            self.padding = torch.cat((self.padding, self.padding.new_ones(tokens.size(0), 1)), dim=1)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep, repeat or permute rows: row i becomes old row ``index[i]`` (beam search)."""
        self.tokens = self.tokens[index]
        if self.padding is not None:
            self.padding = self.padding[index]
        if self.cache is not None:
            self.cache.reorder(index)
        elif self.encoder_decoder:
            # Without a cache the memory is opaque: re-encode when rows map to other sources.
            rows = self.rows[index]
            if not torch.equal(rows, self.rows):
                mask = None if self.source_mask is None else self.source_mask[rows]
                self.memory = self.model.encode(self.source[rows], attention_mask=mask)
            self.rows = rows

    # --- iteration-level batching (decoder-only) --------------------------------------------
    def _join_problem(self, *, fed: bool = True) -> str | None:
        """Why this session cannot take or give rows in :meth:`join` (``fed``: every token must
        be in the cache), or None if it can."""
        name = type(self.model).__name__
        if self.encoder_decoder:
            return (f"{name} is an encoder–decoder; only decoder-only sessions can be joined (decode "
                    f"encoder–decoder batches apart)")
        if not accepts_padding(self.model):
            return (f"{name} does not take a padding attention_mask (it does not declare accepts_padding = True), "
                    f"so its sessions cannot be joined; decode them apart")
        if self.cache is None:
            return None
        if not getattr(self.cache, "joinable", False):  # e.g. RNNState, which does not declare it
            kind = getattr(self.cache, "description", type(self.cache).__name__)
            return (f"a {kind} cannot be padded and joined, only a dynamic KVCache of LayerCache layers; decode "
                    f"these sessions apart (or with use_cache=False)")
        if any(layer.length != self.consumed for layer in self.cache.layers):
            return (f"this session's KV cache does not hold all {self.consumed} fed columns in every layer, so it "
                    f"cannot be padded and joined; decode these sessions apart")
        if fed and self.consumed != self.tokens.size(1):
            return "join() needs cached sessions whose tokens are all in the cache; call next_logits() on both first"
        return None

    def can_join(self, other: Session | None = None) -> bool:
        """Whether :meth:`join` would accept ``other`` (without ``other``: whether this session
        can take rows at all, e.g. before building the one to join).

        A model may still refuse padding it takes in general (a :class:`~attnlab.models.DecoderLM`
        with ``attention.global_tokens``): its next :meth:`next_logits` raises then.
        """
        return self._join_problem() is None and (other is None or self._pair_problem(other) is None)

    def _pair_problem(self, other: Session) -> str | None:
        """Why ``other``'s rows cannot join this session's, or None if they can."""
        problem = other._join_problem()
        if problem is not None:
            return problem
        if other.model is not self.model:
            return "join() needs two sessions of the same model"
        if (self.cache is None) != (other.cache is None):
            return "join() needs two sessions that both keep a cache or both do not (use_cache)"
        return None

    def join(self, other: Session) -> None:
        """Append ``other``'s rows to this session's, in place (iteration-level batching).

        Both sessions are left-padded to the width of the longer one: tokens with 0, the
        real-token mask with False, and (cached sessions) every layer's keys and values with
        zeros, never attended to since the mask hides them. A decoder-only row's positions
        count its real tokens only, so padding on the left changes nothing it sees: every row
        goes on decoding as it would alone. Cached sessions must have fed every token first
        (call :meth:`next_logits` on both, and concatenate their logits as the joined batch's).
        Afterwards :attr:`prefix_len` is the joined width, so :attr:`generated` starts empty;
        the joined width plus the tokens still to come must fit the model's context.

        Args:
            other: a session of the same model, prefilled if cached; left unusable afterwards.

        Raises:
            ValueError: either session cannot be joined (an encoder–decoder, a model without
                a padding ``attention_mask``, a cache that is not a dynamic :class:`KVCache`
                of :class:`LayerCache` layers, tokens not yet fed to the cache), or the two
                differ in model or in keeping a cache.
        """
        problem = self._join_problem() or self._pair_problem(other)
        if problem is not None:
            raise ValueError(problem)
        width = max(self.tokens.size(1), other.tokens.size(1))
        masks = [_pad_left(s._real_mask(), width, False) for s in (self, other)]  # (N, W), (n, W)
        self.tokens = torch.cat([_pad_left(s.tokens, width) for s in (self, other)])  # (N + n, W)
        self.padding = torch.cat(masks)  # (N + n, W)
        if self.cache is not None:
            self.cache.join(other.cache, width)  # every column fed: the cache is as wide as the tokens
            self.consumed = width
        self.prefix_len = width

    def _real_mask(self) -> torch.Tensor:
        """(N, T) bool real-token mask of :attr:`tokens` (all True without padding)."""
        if self.padding is not None:
            return self.padding
        return torch.ones(self.tokens.shape, dtype=torch.bool, device=self.tokens.device)

    def trim(self) -> int:
        """Drop leading columns that are padding in every row (in tokens, padding and cache), in place.

        They appear when the rows with the longest prompts leave a joined batch
        (:meth:`reorder`); dropping them keeps a batch that keeps taking rows from creeping
        towards the context limit. Rows decode as before: the columns were never attended to.

        Returns:
            The number of columns dropped (0 without padding, or for a session whose rows
            cannot be joined: an encoder–decoder, a cache other than a dynamic KVCache).
        """
        if self.padding is None or self._join_problem(fed=False) is not None:
            return 0
        first = int(self.padding.any(dim=0).long().argmax())  # first column real in some row
        if first == 0:
            return 0
        self.tokens, self.padding = self.tokens[:, first:], self.padding[:, first:]  # (N, T - first)
        if self.cache is not None and self.consumed:  # before the prefill there is nothing cached to drop
            self.cache.drop_left(first)
            self.consumed -= first
        self.prefix_len = max(self.prefix_len - first, 0)
        return first
