"""The attention mask of one forward pass, built in one place.

Every transformer forward attends under the same three restrictions, ANDed in this order:

1. the configured self-attention pattern (:func:`self_attention_mask`: causal or
   bidirectional, sliding window, global tokens);
2. padding: keys that are not real tokens (an encoder's ``attention_mask``, a left-padded
   decoder batch as placed by :func:`attnlab.attention.cache.place_tokens`);
3. documents: packed training windows where a token sees only its own document.

:func:`forward_mask` is the one function that combines them; models call it instead of
ANDing masks themselves. (A :class:`~attnlab.attention.cache.StaticKVCache` rewrites the
combined pattern to absolute slots; that is slot bookkeeping, not a new restriction.)
"""

from __future__ import annotations

from typing import Optional

import torch

from attnlab.attention.masks import Mask, document, key_padding, local_global, sliding_window
from attnlab.attention.masks import causal as causal_mask
from attnlab.config import ModelConfig


def self_attention_mask(cfg: ModelConfig, *, causal: bool) -> Optional[Mask]:
    """The self-attention pattern of ``cfg.attention``, before any padding.

    Causal (decoders) or bidirectional (encoders), restricted to a sliding window of
    ``cfg.attention.window`` tokens when one is set, plus ``global_tokens`` that see and
    are seen by every token.

    Args:
        cfg: the architecture.
        causal: whether keys after the query are hidden.

    Returns:
        The mask, or None for full bidirectional attention (no window, not causal).
    """
    a = cfg.attention
    if a.window is None:
        return causal_mask() if causal else None
    if a.global_tokens:
        return local_global(a.window, a.global_tokens, causal=causal)
    return sliding_window(a.window, causal=causal)


def _and(mask: Optional[Mask], extra: Optional[Mask]) -> Optional[Mask]:
    """``mask & extra``, where None means "no restriction"."""
    if extra is None:
        return mask
    return extra if mask is None else mask & extra


def forward_mask(
    pattern: Optional[Mask],
    *,
    padding: Optional[torch.Tensor] = None,
    document_ids: Optional[torch.Tensor] = None,
) -> Optional[Mask]:
    """What the tokens of one forward pass may attend to: pattern AND real keys AND same document.

    Args:
        pattern: the model's self-attention pattern (:func:`self_attention_mask`), or None
            for full attention.
        padding: (B, Tk) 1/0 or bool, true at real keys (cached and new ones), or None.
        document_ids: (B, T) document number of every token of packed windows, or None.

    Returns:
        The combined mask, or None when nothing is restricted.
    """
    mask = _and(pattern, None if padding is None else key_padding(padding))
    return _and(mask, None if document_ids is None else document(document_ids))


__all__ = ["forward_mask", "self_attention_mask"]
