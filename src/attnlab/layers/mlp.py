"""Position-wise feed-forward networks: plain (up → act → down) and gated (GLU) forms.

Every MLP kind is one of two classes with a named activation:

==============  ===================================  =======================================
kind            form                                 used by
==============  ===================================  =======================================
``gelu``        down(gelu_tanh(up(x)))               GPT-2
``gelu_exact``  down(gelu(up(x)))                    BERT
``relu``        down(relu(up(x)))                    original Transformer, T5 v1.0
``swiglu``      down(silu(gate(x)) · up(x))          Llama, PaLM
``geglu``       down(gelu_tanh(gate(x)) · up(x))     T5 v1.1 ("gated-gelu")
==============  ===================================  =======================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2's and T5 v1.1's "gelu_new")."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu_tanh": gelu_tanh,
    "gelu": F.gelu,  # exact (erf) form
    "silu": F.silu,
}
"""Activation name → function (names, not functions, are stored on the modules)."""


def _check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose one of {', '.join(ACTIVATIONS)}")
    return name


class MLP(nn.Module):
    """down(act(up(x))), then dropout.

    Args:
        dim: input and output width.
        hidden: hidden width.
        bias: biases on both projections.
        dropout: dropout on the output (training only).
        activation: a name from :data:`ACTIVATIONS`.
    """

    def __init__(self, dim: int, hidden: int, bias: bool = True, dropout: float = 0.0, activation: str = "gelu_tanh"):
        super().__init__()
        self.activation = _check_activation(activation)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) → (..., dim)."""
        return self.dropout(self.down_proj(ACTIVATIONS[self.activation](self.up_proj(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


class GatedMLP(nn.Module):
    """down(act(gate(x)) · up(x)), then dropout (a GLU variant, Shazeer 2020).

    Args:
        dim: input and output width.
        hidden: hidden width.
        bias: biases on the three projections.
        dropout: dropout on the output (training only).
        activation: a name from :data:`ACTIVATIONS` (``"silu"``: SwiGLU, ``"gelu_tanh"``: GEGLU).
    """

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0, activation: str = "silu"):
        super().__init__()
        self.activation = _check_activation(activation)
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) → (..., dim)."""
        return self.dropout(self.down_proj(ACTIVATIONS[self.activation](self.gate_proj(x)) * self.up_proj(x)))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


MLP_KINDS: dict[str, tuple[type[nn.Module], str]] = {
    "gelu": (MLP, "gelu_tanh"),
    "gelu_exact": (MLP, "gelu"),
    "relu": (MLP, "relu"),
    "swiglu": (GatedMLP, "silu"),
    "geglu": (GatedMLP, "gelu_tanh"),
}
"""``model.mlp`` value → (class, activation)."""


def build_mlp(kind: str, dim: int, hidden: int, bias: bool, dropout: float) -> nn.Module:
    """The MLP of a config's ``mlp`` field (see the module docstring for the kinds).

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in MLP_KINDS:
        raise ValueError(f"unknown mlp '{kind}'; choose one of {', '.join(MLP_KINDS)}")
    cls, activation = MLP_KINDS[kind]
    return cls(dim, hidden, bias, dropout, activation=activation)

