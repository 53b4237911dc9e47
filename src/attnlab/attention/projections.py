"""The projections every attention mixer shares: q, k, v in; heads; o out."""

from __future__ import annotations

import torch
from torch import nn


class HeadProjections(nn.Module):
    """Query/key/value/output projections with grouped key/value heads.

    Args:
        d_model: input (and output) width.
        n_head: query heads.
        n_kv_head: key/value heads (default ``n_head``); must divide ``n_head``.
        d_context: width keys and values are projected from (cross attention; default ``d_model``).
        bias: biases on the projections.
    """

    def __init__(self, d_model: int, n_head: int, n_kv_head: int | None = None, *,
                 d_context: int | None = None, bias: bool = True):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if d_model % n_head or n_head % n_kv_head:
            raise ValueError(f"need d_model % n_head == 0 and n_head % n_kv_head == 0, "
                             f"got {d_model}, {n_head}, {n_kv_head}")
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = d_model // n_head
        d_context = d_context or d_model
        self.q_proj = nn.Linear(d_model, n_head * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_context, n_kv_head * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_context, n_kv_head * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_head * self.head_dim, d_model, bias=bias)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) → (B, H, T, D)."""
        return self._heads(self.q_proj(x), self.n_head)

    def project_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d_context) → keys and values, each (B, Hkv, T, D)."""
        return self._heads(self.k_proj(src), self.n_kv_head), self._heads(self.v_proj(src), self.n_kv_head)

    def project_out(self, out: torch.Tensor) -> torch.Tensor:
        """(B, H, T, D) → (B, T, d_model)."""
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))
