"""The heart of attnlab: WHAT attention computes.

``attention(q, k, v, mask=..., bias=..., backend=...)`` is the one function every
model calls; :mod:`attnlab.attention.backends` holds HOW it runs.
"""

from attnlab.attention import masks
from attnlab.attention.backends import dispatch_log
from attnlab.attention.cache import KVCache, LayerCache
from attnlab.attention.functional import attention
from attnlab.attention.masks import Mask, causal, document, full, key_padding, padding
from attnlab.attention.module import MultiHeadAttention
from attnlab.attention.positions import (
    LearnedPositions,
    PositionEncoding,
    RotaryPositions,
    SinusoidalPositions,
    build_positions,
)

__all__ = [
    "KVCache", "LayerCache", "LearnedPositions", "Mask", "MultiHeadAttention", "PositionEncoding",
    "RotaryPositions", "SinusoidalPositions", "attention", "build_positions", "causal", "dispatch_log",
    "document", "full", "key_padding", "masks", "padding",
]
