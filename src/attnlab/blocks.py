"""Residual blocks assembled from attention, norms and MLPs.

One block class serves decoders, encoders and encoder–decoder decoders: the mask passed to
``forward`` decides whether it is causal (decoder) or bidirectional (encoder),
``cross=True`` adds a cross-attention sublayer between self-attention and the MLP
(queries from the block's input, keys and values from ``context``, the encoder output),
and ``cfg.norm_placement`` decides where the norms sit in every sublayer ``f``:

- ``"pre"`` (GPT-2, Llama, T5): ``x + f(norm(x))``;
- ``"post"`` (original Transformer, BERT): ``norm(x + f(x))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from attnlab.attention import LayerCache, Mask, MultiHeadAttention
from attnlab.attention.linear import LinearAttention
from attnlab.attention.positions import Rotary
from attnlab.attention.score_mods import ScoreMod
from attnlab.config import ModelConfig
from attnlab.layers import build_mlp, build_norm


def build_mixer(cfg: ModelConfig) -> nn.Module:
    """The token mixer a config asks for: softmax attention or linear attention."""
    if cfg.mixer == "linear":
        return LinearAttention(cfg.d_model, cfg.n_head, cfg.kv_heads, bias=cfg.bias)
    return MultiHeadAttention(
        cfg.d_model, cfg.n_head, cfg.kv_heads, bias=cfg.bias, dropout=cfg.dropout, backend=cfg.attention.backend,
        scale=cfg.attention.scale,
    )


class Block(nn.Module):
    """Self-attention (then cross-attention), then MLP, each a residual sublayer, pre- or post-norm.

    Args:
        cfg: the architecture (mixer, norm, MLP, dropout, norm placement, top-k, attention scale).
        cross: add a cross-attention sublayer (an encoder–decoder's decoder block). It has its
            own norm and residual; it gets no rotary positions and no score mod (no position
            bias, no soft-capping), as in T5 and the original Transformer; top-k applies to both.
    """

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()
        self.post_norm = cfg.norm_placement == "post"
        self.attn_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = build_mixer(cfg)
        self.topk = cfg.attention.topk
        if cross:
            self.cross_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
            self.cross_attn = build_mixer(cfg)
        else:
            self.cross_norm = self.cross_attn = None
        self.mlp_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.mlp = build_mlp(cfg.mlp, cfg.d_model, cfg.ff_dim, cfg.bias, cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _sublayer(self, x: torch.Tensor, norm: nn.Module, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One residual branch: ``x + f(norm(x))`` (pre-norm) or ``norm(x + f(x))`` (post-norm)."""
        if self.post_norm:
            return norm(x + f(x))
        return x + f(norm(x))

    def _attend(self, attn: nn.Module, h: torch.Tensor, weights: list, return_weights: bool, **kw) -> torch.Tensor:
        """Run ``attn`` on ``h``, keep its weights in ``weights`` if asked, apply the residual dropout."""
        out = attn(h, return_weights=return_weights, topk=self.topk, **kw)
        if return_weights:
            out, w = out
            weights.append(w)
        return self.resid_dropout(out)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: Mask | None = None,
        rotary: Rotary | None = None,
        cache: LayerCache | None = None,
        return_weights: bool = False,
        score_mod: ScoreMod | None = None,
        context: torch.Tensor | None = None,
        context_mask: Mask | None = None,
        cross_cache: LayerCache | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """x: (B, T, d_model) → (B, T, d_model), and the attention weights if asked.

        Args:
            x: (B, T, d_model) the residual stream.
            mask: self-attention mask; None is bidirectional (every token sees every token).
            rotary: RoPE rotation for this step's positions (self-attention only).
            cache: this block's self-attention KV cache (appended to).
            return_weights: also return the weights: the (B, H, T, Tk) self-attention weights,
                or for a cross block ``(self_weights, cross_weights)`` with cross weights
                (B, H, T, S).
            score_mod: self-attention score mod (position bias, soft-capping).
            context: (B, S, d_model) what a cross block attends to (the encoder output).
            context_mask: which context positions may be attended (e.g. source padding).
            cross_cache: this block's cross-attention cache: the context is projected to keys
                and values on the first call and reused afterwards (``context`` is then ignored).

        Raises:
            ValueError: a context for a block without cross-attention, or none for one with it.
        """
        if (context is None) != (self.cross_attn is None):
            raise ValueError("a cross-attention block needs context= (the encoder output)" if context is None
                             else "context given to a block without cross-attention; build it with cross=True")
        weights: list[torch.Tensor] = []
        x = self._sublayer(x, self.attn_norm, lambda h: self._attend(
            self.attn, h, weights, return_weights, mask=mask, rotary=rotary, cache=cache, score_mod=score_mod))
        if self.cross_attn is not None:
            x = self._sublayer(x, self.cross_norm, lambda h: self._attend(
                self.cross_attn, h, weights, return_weights, context=context, mask=context_mask, cache=cross_cache))
        x = self._sublayer(x, self.mlp_norm, self.mlp)
        if not return_weights:
            return x
        return x, (weights[0] if self.cross_attn is None else tuple(weights))


DecoderBlock = Block
"""A block under a causal mask (kept as the name decoders import)."""

EncoderBlock = Block
"""A block under a bidirectional (padding-only) mask."""
