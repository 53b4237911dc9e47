"""The heart of attnlab: WHAT attention computes.

``attention(q, k, v, mask=..., bias=..., score_mod=..., backend=...)`` is the one
function every model calls; :mod:`attnlab.attention.backends` holds HOW it runs.
"""

from attnlab.attention import masks, scoring
from attnlab.attention.backends import Backend, dispatch_log, register_backend
from attnlab.attention.cache import KVCache, LayerCache, StaticKVCache
from attnlab.attention.functional import attention
from attnlab.attention.linear import LinearAttention, LinearState, linear_attention
from attnlab.attention.masks import (
    Mask,
    adjacency,
    block_sparse,
    causal,
    document,
    full,
    key_padding,
    local_global,
    padding,
    prefix_lm,
    sliding_window,
    strided,
)
from attnlab.attention.module import MultiHeadAttention
from attnlab.attention.positions import (
    ALiBiPositions,
    LearnedPositions,
    PositionEncoding,
    RelativePositionBias,
    RotaryPositions,
    SinusoidalPositions,
    alibi_slopes,
    build_positions,
    relative_position_bucket,
)
from attnlab.attention.score_mods import ScoreMod, alibi, softcap
from attnlab.attention.scoring import attend, build_scoring

__all__ = [
    "ALiBiPositions", "Backend", "KVCache", "LayerCache", "StaticKVCache", "LearnedPositions", "LinearAttention",
    "LinearState", "Mask", "MultiHeadAttention", "PositionEncoding", "RelativePositionBias", "RotaryPositions",
    "ScoreMod", "SinusoidalPositions", "adjacency", "attention", "block_sparse", "build_positions", "causal",
    "dispatch_log", "document", "full", "key_padding", "linear_attention", "local_global", "masks", "padding",
    "prefix_lm", "register_backend", "sliding_window", "softcap", "strided", "alibi", "alibi_slopes", "attend",
    "build_scoring", "relative_position_bucket", "scoring",
]
