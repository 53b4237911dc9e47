"""Multi-head attention as a module: projections, heads, positions, cache."""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnlab.attention.cache import LayerCache
from attnlab.attention.functional import attention
from attnlab.attention.masks import Mask
from attnlab.attention.positions import Rotary
from attnlab.attention.projections import HeadProjections
from attnlab.attention.score_mods import ScoreMod
from attnlab.attention.scoring import build_scoring

SCORINGS = ("scaled_dot", "dot", "general", "additive", "concat")


class MultiHeadAttention(HeadProjections):
    """Multi-head attention with grouped key/value heads (MHA, GQA, MQA).

    ``n_kv_head == n_head`` is classic multi-head attention, ``1`` is multi-query,
    anything between is grouped-query attention: query head h reads key/value head
    ``h // (n_head // n_kv_head)``. Pass ``context`` for cross attention.

    Args:
        d_model: input (and output) width.
        n_head: query heads.
        n_kv_head: key/value heads (default ``n_head``).
        d_context: width of the cross-attention context (default ``d_model``).
        bias: biases on the projections.
        dropout: dropout on the attention weights (training only).
        backend: attention backend passed to :func:`~attnlab.attention.attention`.
        scoring: how a query and a key are compared: ``"scaled_dot"`` (q·k/√d, the default,
            fused kernels), ``"dot"`` (q·k), or a parameterised score from
            :mod:`attnlab.attention.scoring` (``"general"`` Luong qᵀWk, ``"additive"``
            Bahdanau, ``"concat"``), shared by all heads. The parameterised scores are
            computed as a (B, H, Tq, Tk) tensor and enter the backend as an additive bias on
            zero-width dot products, so masks, caches and backends work unchanged.
        scale: multiplier of q·k for ``"scaled_dot"`` (None: 1/√head_dim; T5 uses 1.0).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_head: int | None = None,
        *,
        d_context: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
        scoring: str = "scaled_dot",
        scale: float | None = None,
    ):
        if scoring not in SCORINGS:
            raise ValueError(f"unknown scoring '{scoring}'; choose one of {', '.join(SCORINGS)}")
        if scale is not None and scoring != "scaled_dot":
            raise ValueError(f"scale applies to scoring='scaled_dot' only, not '{scoring}'; drop scale")
        super().__init__(d_model, n_head, n_kv_head, d_context=d_context, bias=bias)
        self.dropout = dropout
        self.backend = backend
        self.scoring = scoring
        self.scale = 1.0 if scoring == "dot" else scale  # None: the backend's 1/sqrt(head_dim)
        self.scorer = (
            build_scoring(scoring, self.head_dim, self.head_dim)
            if scoring in ("general", "additive", "concat") else None
        )
        # When set, called with this layer's (B, H, Tq, Tk) weights on every forward;
        # only then does the layer run the weight-returning (eager) path.
        self.capture: Callable[[torch.Tensor], None] | None = None

    def _parameterised_scores(
        self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores from ``self.scorer`` as a bias; q and k become zero-width so q·k adds nothing."""
        b, h, tq, d = q.shape
        tk = k.shape[-2]
        k_full = k.repeat_interleave(h // k.shape[1], dim=1)  # (B, H, Tk, D)
        scores = self.scorer(q.reshape(b * h, tq, d), k_full.reshape(b * h, tk, d)).view(b, h, tq, tk)
        bias = scores if bias is None else scores + bias
        return q.new_zeros(b, h, tq, 1), k.new_zeros(b, k.shape[1], tk, 1), bias  # (B, H, Tq, 1), (B, Hkv, Tk, 1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        mask: Mask | torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        rotary: Rotary | None = None,
        cache: LayerCache | None = None,
        return_weights: bool = False,
        score_mod: ScoreMod | None = None,
        topk: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend from ``x`` to itself (or to ``context``).

        Args:
            x: (B, Tq, d_model) queries' input.
            context: (B, Tk, d_context) for cross attention, else None.
            mask: allowed (query, key) pairs; see :mod:`attnlab.attention.masks`.
            bias: additive score bias broadcastable to (B, H, Tq, Tk).
            rotary: RoPE rotation for this step's positions (self attention only).
            cache: this layer's KV cache. Self attention appends the new keys and
                values; cross attention computes the context's once and reuses them.
            return_weights: also return (B, H, Tq, Tk) weights.
            score_mod: score modification (ALiBi, relative bias, soft-capping).
            topk: keep each query's k best keys.

        Returns:
            (B, Tq, d_model), or ``(output, weights)``.
        """
        if rotary is not None and context is not None:
            raise ValueError("rotary positions apply to self attention only; pass rotary=None with a context")
        q = self.project_q(x)  # (B, H, Tq, D)
        if context is not None and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # cross attention: context already projected
        else:
            k, v = self.project_kv(x if context is None else context)  # (B, Hkv, Tk, D)
            if rotary is not None:
                q, k = rotary(q, k)
            if cache is not None:
                k, v = cache.append(k, v)  # (B, Hkv, Tcache + Tk, D)
        if self.scorer is not None:
            q, k, bias = self._parameterised_scores(q, k, bias)
        want_weights = return_weights or self.capture is not None
        out = attention(
            q, k, v, mask=mask, bias=bias, scale=self.scale, dropout_p=self.dropout if self.training else 0.0,
            backend=self.backend, return_weights=want_weights, score_mod=score_mod, topk=topk,
        )
        weights = None
        if want_weights:
            out, weights = out
            if self.capture is not None:
                self.capture(weights.detach())
        out = self.project_out(out)  # (B, Tq, d_model)
        return (out, weights) if return_weights else out
