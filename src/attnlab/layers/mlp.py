"""Position-wise feed-forward networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeluMLP(nn.Module):
    """up → GELU → down; ``approximate="tanh"`` as GPT-2, ``"none"`` (exact erf form) as BERT."""

    def __init__(self, dim: int, hidden: int, bias: bool = True, dropout: float = 0.0, approximate: str = "tanh"):
        super().__init__()
        self.approximate = approximate
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.gelu(self.up_proj(x), approximate=self.approximate)))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)) as in Llama / PaLM."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


def build_mlp(kind: str, dim: int, hidden: int, bias: bool, dropout: float) -> nn.Module:
    """``"gelu"`` (tanh approximation), ``"gelu_exact"`` (erf) or ``"swiglu"``."""
    if kind in ("gelu", "gelu_exact"):
        return GeluMLP(dim, hidden, bias, dropout, approximate="tanh" if kind == "gelu" else "none")
    if kind == "swiglu":
        return SwiGLU(dim, hidden, bias, dropout)
    raise ValueError(f"unknown mlp '{kind}'")
