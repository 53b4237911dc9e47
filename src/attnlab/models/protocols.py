"""What generation needs of a model and of its cache, as small ``typing.Protocol``s.

:mod:`attnlab.generate` drives any model that has these shapes, not only attnlab's own:

- :class:`CausalLM`: a decoder-only LM (``model(input_ids, cache=...)``, ``make_cache()``,
  ``max_context``): :class:`~attnlab.models.DecoderLM`, :class:`~attnlab.models.RNNLanguageModel`.
- :class:`EncoderDecoderLM`: ``encode`` → memory, ``make_cache(memory)``, ``decode(ids, cache=...)``,
  ``decoder_start_id``, ``is_encoder_decoder = True``: :class:`~attnlab.models.EncoderDecoder`,
  :class:`~attnlab.models.Seq2SeqRNN`.
- :class:`KVCacheLike`: what a decoding run keeps between steps (its length, and rows that
  beam search can reorder).

Capabilities a signature cannot show are declared by the model class, never sniffed:
``is_encoder_decoder`` (which of the two protocols) and ``accepts_padding`` (whether the
decoder side — ``forward``, or ``decode`` of an encoder–decoder — takes an ``attention_mask``
of left-padded tokens); read them with :func:`is_encoder_decoder` and :func:`accepts_padding`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch


@runtime_checkable
class KVCacheLike(Protocol):
    """A decoding state: tokens consumed so far, and batch rows that can be kept or repeated."""

    @property
    def length(self) -> int:
        """Tokens already consumed (positions of new tokens start here)."""
        ...

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row ``index[i]`` (beam search)."""
        ...


@runtime_checkable
class CausalLM(Protocol):
    """A decoder-only LM that generation can drive token by token.

    Attributes:
        max_context: the longest sequence it takes (prompt + new tokens).
        accepts_padding: ``forward`` takes ``attention_mask``, a (B, cached + T) 1/0 mask of a
            left-padded batch (each row then decodes as it would alone).
    """

    max_context: int
    accepts_padding: ClassVar[bool]

    def make_cache(self) -> Any:
        """An empty decoding state for ``forward(..., cache=...)``."""
        ...

    def __call__(self, input_ids: torch.Tensor, *, cache: Any = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids (after the cached ones) → (B, T, V) next-token logits."""
        ...


@runtime_checkable
class EncoderDecoderLM(Protocol):
    """An encoder–decoder that generation can drive: encode once, then decode token by token.

    Attributes:
        is_encoder_decoder: True (how generation tells it from a :class:`CausalLM`).
        decoder_start_id: the token every decoder sequence starts with.
        max_context: the longest decoder sequence.
        accepts_padding: ``decode`` takes ``attention_mask``, left-padded decoder prefixes.
    """

    is_encoder_decoder: ClassVar[bool]
    decoder_start_id: int
    max_context: int
    accepts_padding: ClassVar[bool]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        """(B, S) source ids (and their 1/0 padding mask) → the memory the decoder attends to."""
        ...

    def make_cache(self, memory: Any) -> KVCacheLike:
        """An empty decoding state over ``memory``."""
        ...

    def decode(self, decoder_input_ids: torch.Tensor, cache: Any = None, *, memory: Any = None,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) decoder ids → (B, T, V) logits, with exactly one of ``cache`` / ``memory``."""
        ...


def is_encoder_decoder(model: object) -> bool:
    """True for models that declare ``is_encoder_decoder = True`` (the :class:`EncoderDecoderLM` protocol)."""
    return bool(getattr(model, "is_encoder_decoder", False))


def accepts_padding(model: object) -> bool:
    """Whether the model declares ``accepts_padding = True``: its decoder side takes a
    left-padding ``attention_mask`` (undeclared: it does not)."""
    return bool(getattr(model, "accepts_padding", False))


__all__ = ["CausalLM", "EncoderDecoderLM", "KVCacheLike", "accepts_padding", "is_encoder_decoder"]
