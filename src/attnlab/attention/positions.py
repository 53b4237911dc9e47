"""Position information, one interface for every scheme.

A :class:`PositionEncoding` can act in two places, and each scheme uses the one it
needs: ``embed(positions)`` returns vectors added to the token embeddings (learned,
sinusoidal), ``rotary(positions)`` returns a function that rotates queries and keys
(RoPE). Positions are absolute token indices, so a KV-cached decode step at position
``t`` gets exactly what a full forward pass gives token ``t``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

Rotary = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class PositionEncoding(nn.Module):
    """Base class: no position information (NoPE)."""

    def __init__(self, max_len: int):
        super().__init__()
        self.max_len = max_len

    def embed(self, positions: torch.Tensor) -> Optional[torch.Tensor]:
        """(T,) or (B, T) positions → (T, D) / (B, T, D) vectors to add, or None."""
        return None

    def rotary(self, positions: torch.Tensor) -> Optional[Rotary]:
        """(T,) or (B, T) positions → a function ``(q, k) -> (q, k)``, or None."""
        return None


class LearnedPositions(PositionEncoding):
    """A trained vector per position (GPT-2, BERT)."""

    def __init__(self, max_len: int, dim: int):
        super().__init__(max_len)
        self.weight = nn.Parameter(torch.zeros(max_len, dim))

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        return self.weight[positions]  # (T, D)


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


class RotaryPositions(PositionEncoding):
    """RoPE (Su et al.): rotate each (i, i + D/2) pair of q and k by angle p·θ_i.

    The score q_m·k_n then depends on positions only through m - n. We use the
    "rotate half" pairing of GPT-NeoX / Llama.
    """

    def __init__(self, max_len: int, head_dim: int, theta: float = 10000.0):
        super().__init__(max_len)
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
        angles = torch.arange(max_len, dtype=torch.float64).unsqueeze(1) * inv_freq  # (P, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (P, D)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def rotary(self, positions: torch.Tensor) -> Rotary:
        cos, sin = self.cos[positions], self.sin[positions]  # (T, D) or (B, T, D)
        if cos.dim() == 3:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D)

        def apply(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # q: (B, H, T, D), k: (B, Hkv, T, D)
            c, s = cos.to(q.dtype), sin.to(q.dtype)
            return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s

        return apply


def build_positions(kind: str, max_len: int, d_model: int, head_dim: int, rope_theta: float = 10000.0) -> PositionEncoding:
    """Make the position scheme named in a model config."""
    if kind == "learned":
        return LearnedPositions(max_len, d_model)
    if kind == "sinusoidal":
        return SinusoidalPositions(max_len, d_model)
    if kind == "rope":
        return RotaryPositions(max_len, head_dim, rope_theta)
    if kind == "none":
        return PositionEncoding(max_len)
    raise ValueError(f"unknown position scheme '{kind}'")


__all__ = [
    "LearnedPositions", "PositionEncoding", "RotaryPositions", "SinusoidalPositions",
    "build_positions", "rotate_half", "sinusoidal_table",
]
