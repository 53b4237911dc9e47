"""Position information, one interface for every scheme.

A :class:`PositionEncoding` can act in three places, and each scheme uses the one it
needs: ``embed(positions)`` returns vectors added to the token embeddings (learned,
sinusoidal), ``rotary(positions)`` returns a function that rotates queries and keys
(RoPE), ``score_mod()`` returns a :class:`~attnlab.attention.score_mods.ScoreMod` that
biases the attention scores (ALiBi, T5 relative bias). Positions are absolute token
indices, so a KV-cached decode step at position ``t`` gets exactly what a full forward
pass gives token ``t`` (score mods see query i at position Tk - Tq + i).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention.score_mods import ScoreMod, alibi

Rotary = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class PositionEncoding(nn.Module):
    """Base class: no position information (NoPE)."""

    def __init__(self, max_len: int):
        super().__init__()
        self.max_len = max_len

    def embed(self, positions: torch.Tensor) -> torch.Tensor | None:
        """(T,) or (B, T) positions → (T, D) / (B, T, D) vectors to add, or None."""
        return None

    def rotary(self, positions: torch.Tensor) -> Rotary | None:
        """(T,) or (B, T) positions → a function ``(q, k) -> (q, k)``, or None."""
        return None

    def score_mod(self) -> ScoreMod | None:
        """A score modification to pass to :func:`~attnlab.attention.attention`, or None."""
        return None


class LearnedPositions(PositionEncoding):
    """A trained vector per position (GPT-2, BERT)."""

    def __init__(self, max_len: int, dim: int):
        super().__init__(max_len)
        self.weight = nn.Parameter(torch.zeros(max_len, dim))

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(positions, self.weight)  # (T, D) or (B, T, D); a gather, cheaper than indexing


def sinusoidal_table(max_len: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed table of "Attention Is All You Need": PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(...).

    Returns:
        (max_len, dim) float32.
    """
    pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(D/2),)
    table = torch.zeros(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return table.float()


class SinusoidalPositions(PositionEncoding):
    """Fixed sinusoids added to the embeddings (no parameters)."""

    def __init__(self, max_len: int, dim: int, base: float = 10000.0):
        super().__init__(max_len)
        self.register_buffer("table", sinusoidal_table(max_len, dim, base), persistent=False)

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table[positions]  # (T, D)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (-x2, x1) over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


# -- RoPE ------------------------------------------------------------------------

ROPE_SCALINGS = ("linear", "ntk")


def _check_rope_scaling(scaling: Mapping[str, Any] | None, head_dim: int) -> dict | None:
    """Validate a RoPE scaling spec; ``None`` and ``{"type": "none"}`` mean no scaling."""
    if scaling is None or scaling.get("type", "none") == "none":
        return None
    kind, factor = scaling.get("type"), scaling.get("factor")
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"unknown RoPE scaling type {kind!r}; use one of {', '.join(ROPE_SCALINGS)} or None")
    if not isinstance(factor, (int, float)) or factor < 1:
        raise ValueError(f"RoPE scaling needs a 'factor' >= 1, got {factor!r}")
    if kind == "ntk" and head_dim <= 2:
        raise ValueError(f"NTK RoPE scaling needs head_dim > 2, got {head_dim}")
    return {"type": kind, "factor": float(factor)}


def rope_cos_sin(
    positions: torch.Tensor,
    head_dim: int,
    theta: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE's cos and sin tables for any positions (also beyond a model's context).

    Pair (i, i + D/2) at position p turns by angle p·θ_i with θ_i = base^(-2i/D).
    Scaling stretches RoPE to a longer context:

    - ``{"type": "linear", "factor": f}``: position interpolation (Chen et al. 2023),
      p → p / f, so position f·p looks like the trained position p;
    - ``{"type": "ntk", "factor": f}``: NTK-aware base rescaling, base → θ · f^(D/(D-2)),
      which keeps the highest frequency and slows the lowest one by f.

    Args:
        positions: (P,) positions (any integer or float dtype).
        head_dim: D, even.
        theta: RoPE base.
        scaling: None or a spec as above.

    Returns:
        ``(cos, sin)``, each (P, D) float32.
    """
    scaling = _check_rope_scaling(scaling, head_dim)
    pos = positions.to(torch.float64)  # (P,)
    if scaling is not None and scaling["type"] == "ntk":
        theta = theta * scaling["factor"] ** (head_dim / (head_dim - 2))
    if scaling is not None and scaling["type"] == "linear":
        pos = pos / scaling["factor"]
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=pos.device) / head_dim)  # (D/2,)
    angles = pos.unsqueeze(1) * inv_freq  # (P, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (P, D)
    return angles.cos().float(), angles.sin().float()


class RotaryPositions(PositionEncoding):
    """RoPE (Su et al.): rotate each (i, i + D/2) pair of q and k by angle p·θ_i.

    The score q_m·k_n then depends on positions only through m - n. We use the
    "rotate half" pairing of GPT-NeoX / Llama.

    Args:
        max_len: the trained context length.
        head_dim: D, even.
        theta: the base of the frequencies.
        scaling: None, ``{"type": "linear", "factor": f}`` or ``{"type": "ntk", "factor": f}``
            (see :func:`rope_cos_sin`). With scaling the tables reach ``ceil(max_len · f)``
            positions and ``self.max_len`` says so.
    """

    def __init__(self, max_len: int, head_dim: int, theta: float = 10000.0,
                 scaling: Mapping[str, Any] | None = None):
        self.scaling = _check_rope_scaling(scaling, head_dim)
        factor = self.scaling["factor"] if self.scaling else 1.0
        super().__init__(math.ceil(max_len * factor))
        self.original_max_len = max_len
        self.head_dim = head_dim
        ntk = self.scaling is not None and self.scaling["type"] == "ntk"
        self.theta = theta * factor ** (head_dim / (head_dim - 2)) if ntk else theta  # effective base
        cos, sin = rope_cos_sin(torch.arange(self.max_len), head_dim, theta, self.scaling)  # (P, D)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def rotary(self, positions: torch.Tensor) -> Rotary:
        cos, sin = self.cos[positions], self.sin[positions]  # (T, D) or (B, T, D)
        if cos.dim() == 3:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D)

        def apply(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # q: (B, H, T, D), k: (B, Hkv, T, D)
            c, s = cos.to(q.dtype), sin.to(q.dtype)
            return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s

        return apply


# -- ALiBi -----------------------------------------------------------------------


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al. 2022).

    For n a power of two: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8)
    (n = 8: 1/2, 1/4, ..., 1/256). Otherwise, with m the largest power of two below n:
    the m slopes for m heads, then every other slope of the 2m-head sequence
    (2^(-4/m), 2^(-12/m), ...) until there are n.

    Returns:
        (n_head,) float64.
    """
    if n_head <= 0:
        raise ValueError(f"alibi_slopes needs n_head > 0, got {n_head}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    m = 2 ** int(math.floor(math.log2(n_head)))
    slopes = geometric(m) + geometric(2 * m)[0::2][: n_head - m]
    return torch.tensor(slopes, dtype=torch.float64)


class ALiBiPositions(PositionEncoding):
    """ALiBi: no embeddings; head h adds ``-slope[h] · (q_pos - kv_pos)`` to its scores.

    Meant for causal attention (keys never lie after the query); ``symmetric=True``
    uses ``|q_pos - kv_pos|`` for bidirectional attention. There are no parameters,
    and the bias extrapolates to any length.

    Args:
        max_len: nominal context length (ALiBi itself has no limit).
        n_head: number of query heads.
        symmetric: penalise distance in both directions (encoders).
    """

    def __init__(self, max_len: int, n_head: int, symmetric: bool = False):
        super().__init__(max_len)
        self.n_head, self.symmetric = n_head, symmetric
        self.register_buffer("slopes", alibi_slopes(n_head).float(), persistent=False)  # (H,)

    def _apply(self, fn, recurse=True):
        # Keep exact float32 slopes when the model is cast (e.g. to bf16); follow its device.
        super()._apply(fn, recurse)
        self.slopes = alibi_slopes(self.n_head).float().to(self.slopes.device)
        return self

    def score_mod(self) -> ScoreMod:
        return alibi(self.slopes, symmetric=self.symmetric)


# -- T5 relative position bias -----------------------------------------------------


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """T5's bucket of each relative position (Raffel et al. 2020).

    ``relative_position = memory_position - query_position`` (negative: the key lies in
    the past). Bidirectional: half the buckets for keys in the past or at the query,
    half (offset by ``num_buckets / 2``) for keys in the future. Unidirectional:
    future keys all share bucket 0. Within a half of n buckets, distances below
    n/2 get a bucket each; larger ones are log-spaced up to ``max_distance``, and
    everything further shares the last bucket.

    Args:
        relative_position: integer tensor of any shape.
        bidirectional: whether keys may lie after the query (encoder) or not (decoder).
        num_buckets: total number of buckets.
        max_distance: distance at which the last bucket starts.

    Returns:
        int64 tensor of the same shape, values in ``[0, num_buckets)``.
    """
    rel = relative_position.long()
    bucket = torch.zeros_like(rel)
    n = num_buckets
    if bidirectional:
        n = n // 2
        bucket = bucket + (rel > 0).long() * n
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)
    max_exact = n // 2
    # Log-spaced buckets, computed in float32 as T5 does (so boundaries round the same way).
    far = dist.clamp(min=max_exact).float()
    log_bucket = max_exact + (
        torch.log(far / max_exact) / math.log(max_distance / max_exact) * (n - max_exact)
    ).long()
    log_bucket = log_bucket.clamp(max=n - 1)
    return bucket + torch.where(dist < max_exact, dist, log_bucket)


class RelativePositionBias(PositionEncoding):
    """T5's learned relative position bias: one scalar per (bucket, head), added to the scores.

    Args:
        n_head: number of query heads.
        num_buckets: buckets of :func:`relative_position_bucket`.
        max_distance: distance beyond which all positions share a bucket.
        bidirectional: True for encoders, False for causal decoders.
        max_len: nominal context length (the bias itself has no limit).
    """

    def __init__(self, n_head: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True, max_len: int = 0):
        super().__init__(max_len)
        self.n_head = n_head
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, n_head)  # (buckets, H)

    def bucket(self, q_pos: torch.Tensor, kv_pos: torch.Tensor) -> torch.Tensor:
        """Bucket of each (query, key) pair; positions broadcast against each other."""
        return relative_position_bucket(kv_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance)

    def score_mod(self) -> ScoreMod:
        table = self.relative_attention_bias.weight  # (buckets, H), read live so gradients reach it

        def fn(s, b, h, q, k):
            return s + table[self.bucket(q, k), h].to(s.dtype)  # (.., H, Tq, Tk)

        key = ("relative_bias", self.num_buckets, self.max_distance, self.bidirectional)
        return ScoreMod(fn, "relative_bias", additive=True, key=key)


# -- builder ----------------------------------------------------------------------

POSITION_KINDS = ("learned", "sinusoidal", "rope", "alibi", "relative", "none")


def build_positions(
    kind: str,
    max_len: int,
    d_model: int,
    head_dim: int,
    rope_theta: float = 10000.0,
    *,
    n_head: int | None = None,
    rope_scaling: Mapping[str, Any] | None = None,
    num_buckets: int = 32,
    max_distance: int = 128,
    bidirectional: bool = True,
) -> PositionEncoding:
    """Make the position scheme named in a model config.

    Args:
        kind: one of ``"learned"``, ``"sinusoidal"``, ``"rope"``, ``"alibi"``, ``"relative"``, ``"none"``.
        max_len: context length (for RoPE with scaling: the trained one).
        d_model: width of added embeddings.
        head_dim: RoPE width.
        rope_theta: RoPE base.
        n_head: query heads (needed by ``"alibi"`` and ``"relative"``).
        rope_scaling: RoPE scaling spec, see :class:`RotaryPositions`.
        num_buckets, max_distance: T5 relative bias settings.
        bidirectional: whether keys may lie after the query (encoders). T5 relative bias then
            gives them their own buckets, and ALiBi penalises the distance ``|q_pos - kv_pos|``
            both ways; False (causal decoders) gives the one-sided forms.

    Raises:
        ValueError: unknown kind, a missing ``n_head``, or scaling on a scheme other than RoPE.
    """
    if kind not in POSITION_KINDS:
        raise ValueError(f"unknown position scheme '{kind}'; choose one of {', '.join(POSITION_KINDS)}")
    if kind != "rope" and _check_rope_scaling(rope_scaling, head_dim) is not None:
        raise ValueError(f"rope_scaling applies to position 'rope' only, not '{kind}'; remove it")
    if kind in ("alibi", "relative") and not n_head:
        raise ValueError(f"position scheme '{kind}' needs n_head=<number of query heads>")
    if kind == "learned":
        return LearnedPositions(max_len, d_model)
    if kind == "sinusoidal":
        return SinusoidalPositions(max_len, d_model)
    if kind == "rope":
        return RotaryPositions(max_len, head_dim, rope_theta, scaling=rope_scaling)
    if kind == "alibi":
        return ALiBiPositions(max_len, n_head, symmetric=bidirectional)
    if kind == "relative":
        return RelativePositionBias(n_head, num_buckets, max_distance, bidirectional, max_len=max_len)
    return PositionEncoding(max_len)


__all__ = [
    "ALiBiPositions", "LearnedPositions", "POSITION_KINDS", "PositionEncoding", "RelativePositionBias",
    "RotaryPositions", "SinusoidalPositions", "alibi_slopes", "build_positions", "relative_position_bucket",
    "rope_cos_sin", "rotate_half", "sinusoidal_table",
]
