"""The classic attention score functions, as small modules.

A score function compares every query with every key:
``query (B, Tq, Dq), keys (B, Tk, Dk) -> scores (B, Tq, Tk)``. :func:`attend` turns
scores into weights and a context vector. These serve both transformer-style code and
RNN encoder-decoders (where the query is the decoder state, ``Tq = 1`` per step).

- dot (Luong): ``q · k``
- scaled dot (Vaswani et al.): ``q · k / sqrt(d)``
- general / multiplicative (Luong): ``qᵀ W k``
- additive (Bahdanau): ``vᵀ tanh(W_q q + W_k k)``
- concat (Luong): ``vᵀ tanh(W [q; k])``
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnlab.attention.backends.dense import compute_dtype, masked_softmax


class ScoreFunction(nn.Module):
    """Base class: ``forward(query, keys) -> scores``.

    Args:
        d_q: query width (None: any).
        d_k: key width (None: any).
    """

    def __init__(self, d_q: int | None = None, d_k: int | None = None):
        super().__init__()
        self.d_q, self.d_k = d_q, d_k

    def check(self, query: torch.Tensor, keys: torch.Tensor) -> None:
        """Raise a ValueError unless query is (B, Tq, d_q) and keys (B, Tk, d_k)."""
        if query.dim() != 3 or keys.dim() != 3 or query.shape[0] != keys.shape[0]:
            raise ValueError(
                f"{type(self).__name__} needs query (B, Tq, Dq) and keys (B, Tk, Dk), "
                f"got {tuple(query.shape)} and {tuple(keys.shape)}; use Tq = 1 for a single step"
            )
        wrong_q = self.d_q is not None and query.shape[-1] != self.d_q
        if wrong_q or (self.d_k is not None and keys.shape[-1] != self.d_k):
            raise ValueError(
                f"{type(self).__name__} was built for d_q={self.d_q}, d_k={self.d_k}, "
                f"got query width {query.shape[-1]} and key width {keys.shape[-1]}"
            )

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, Tq, Dq), (B, Tk, Dk) → (B, Tq, Tk) scores."""
        raise NotImplementedError


class DotProductScore(ScoreFunction):
    """``score = q · k`` (Luong "dot"); no parameters, query and key widths must match.

    Args:
        d_q, d_k: optional widths to check inputs against (they must be equal).
    """

    def __init__(self, d_q: int | None = None, d_k: int | None = None):
        d_k = d_q if d_k is None else d_k
        if d_q is not None and d_q != d_k:
            raise ValueError(f"dot-product scoring needs equal query and key widths, got {d_q} and {d_k}; "
                             "use 'general'")
        super().__init__(d_q, d_k)

    def check(self, query: torch.Tensor, keys: torch.Tensor) -> None:
        super().check(query, keys)
        if query.shape[-1] != keys.shape[-1]:
            raise ValueError(f"dot-product scoring needs equal query and key widths, "
                             f"got {query.shape[-1]} and {keys.shape[-1]}; use 'general'")

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        self.check(query, keys)
        return query @ keys.transpose(-2, -1)  # (B, Tq, Tk)


class ScaledDotProductScore(DotProductScore):
    """``score = q · k / sqrt(d)`` (the transformer's scoring)."""

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return super().forward(query, keys) / math.sqrt(keys.shape[-1])  # (B, Tq, Tk)


class MultiplicativeScore(ScoreFunction):
    """``score = qᵀ W k`` (Luong "general"), W: (d_q, d_k) learned."""

    def __init__(self, d_q: int, d_k: int):
        super().__init__(d_q, d_k)
        self.W = nn.Linear(d_k, d_q, bias=False)  # k ↦ W k

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        self.check(query, keys)
        return query @ self.W(keys).transpose(-2, -1)  # (B, Tq, Dq) @ (B, Dq, Tk)


class AdditiveScore(ScoreFunction):
    """``score = vᵀ tanh(W_q q + W_k k + b)`` (Bahdanau et al. 2015).

    Memory grows as B·Tq·Tk·d_hidden, which is fine for the RNN setting it comes from.
    """

    def __init__(self, d_q: int, d_k: int, d_hidden: int | None = None):
        super().__init__(d_q, d_k)
        d_hidden = d_hidden or d_q
        self.W_q = nn.Linear(d_q, d_hidden, bias=False)
        self.W_k = nn.Linear(d_k, d_hidden, bias=True)
        self.v = nn.Linear(d_hidden, 1, bias=False)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        self.check(query, keys)
        hidden = self.W_q(query).unsqueeze(2) + self.W_k(keys).unsqueeze(1)  # (B, Tq, Tk, Dh)
        return self.v(torch.tanh(hidden)).squeeze(-1)  # (B, Tq, Tk)


class ConcatScore(ScoreFunction):
    """``score = vᵀ tanh(W [q; k] + b)`` (Luong "concat"): one matrix over the concatenation.

    The same function family as :class:`AdditiveScore`, parametrised as in Luong et al. 2015.
    """

    def __init__(self, d_q: int, d_k: int, d_hidden: int | None = None):
        super().__init__(d_q, d_k)
        d_hidden = d_hidden or d_q
        self.W = nn.Linear(d_q + d_k, d_hidden, bias=True)
        self.v = nn.Linear(d_hidden, 1, bias=False)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        self.check(query, keys)
        w_q, w_k = self.W.weight[:, : self.d_q], self.W.weight[:, self.d_q:]  # W [q; k] = W_q q + W_k k
        hidden = (query @ w_q.T).unsqueeze(2) + (keys @ w_k.T).unsqueeze(1) + self.W.bias  # (B, Tq, Tk, Dh)
        return self.v(torch.tanh(hidden)).squeeze(-1)  # (B, Tq, Tk)


SCORINGS = {
    "dot": DotProductScore,
    "scaled_dot": ScaledDotProductScore,
    "general": MultiplicativeScore,
    "additive": AdditiveScore,
    "concat": ConcatScore,
}


def build_scoring(name: str, d_q: int, d_k: int, d_hidden: int | None = None) -> ScoreFunction:
    """Make a score function by name: ``"dot"``, ``"scaled_dot"``, ``"general"``, ``"additive"``, ``"concat"``.

    Args:
        name: the scoring.
        d_q: query width.
        d_k: key width.
        d_hidden: hidden width of ``"additive"`` / ``"concat"`` (default ``d_q``).

    Raises:
        ValueError: unknown name, or widths the scoring cannot take.
    """
    if name not in SCORINGS:
        raise ValueError(f"unknown scoring '{name}'; choose one of {', '.join(SCORINGS)}")
    if name in ("additive", "concat"):
        return SCORINGS[name](d_q, d_k, d_hidden)
    return SCORINGS[name](d_q, d_k)


def attend(
    scores: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax the scores over the keys and average the values (the masked softmax of the dense kernel).

    Args:
        scores: (B, Tq, Tk).
        values: (B, Tk, Dv).
        mask: bool, broadcastable to (B, Tq, Tk), True = may attend (e.g. (B, 1, Tk)
            for source padding). A query that may attend to nothing gets zero weights
            and a zero context, with no NaN in the forward or backward pass.

    Returns:
        ``(context (B, Tq, Dv), weights (B, Tq, Tk))``.
    """
    if scores.dim() != 3 or values.dim() != 3 or scores.shape[-1] != values.shape[1]:
        raise ValueError(f"attend needs scores (B, Tq, Tk) and values (B, Tk, Dv), "
                         f"got {tuple(scores.shape)} and {tuple(values.shape)}")
    allowed = None
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"attend needs a bool mask (True = may attend), got {mask.dtype}")
        allowed = torch.broadcast_to(mask, scores.shape)  # (B, Tq, Tk)
    weights = masked_softmax(scores.to(compute_dtype(scores.dtype)), allowed).to(scores.dtype)  # (B, Tq, Tk)
    context = weights @ values.to(weights.dtype)  # (B, Tq, Dv)
    return context, weights


__all__ = [
    "AdditiveScore", "ConcatScore", "DotProductScore", "MultiplicativeScore", "SCORINGS",
    "ScaledDotProductScore", "ScoreFunction", "attend", "build_scoring",
]
