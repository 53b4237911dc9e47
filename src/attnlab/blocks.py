"""Residual blocks assembled from attention, norms and MLPs.

One block class serves decoders and encoders: the mask passed to ``forward`` decides
whether it is causal (decoder) or bidirectional (encoder), and ``cfg.norm_placement``
decides where the norms sit:

- ``"pre"`` (GPT-2, Llama): ``x + attn(norm(x))``, then ``x + mlp(norm(x))``;
- ``"post"`` (original Transformer, BERT): ``norm(x + attn(x))``, then ``norm(x + mlp(x))``.
"""

from __future__ import annotations

from typing import Optional, Union

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
        cfg.d_model, cfg.n_head, cfg.kv_heads, bias=cfg.bias, dropout=cfg.dropout, backend=cfg.attention.backend
    )


class Block(nn.Module):
    """Attention then MLP, each in a residual branch, pre- or post-norm per ``cfg.norm_placement``.

    Args:
        cfg: the architecture (mixer, norm, MLP, dropout, norm placement, top-k).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.post_norm = cfg.norm_placement == "post"
        self.attn_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = build_mixer(cfg)
        self.topk = cfg.attention.topk
        self.mlp_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.mlp = build_mlp(cfg.mlp, cfg.d_model, cfg.ff_dim, cfg.bias, cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: Optional[Mask] = None,
        rotary: Optional[Rotary] = None,
        cache: Optional[LayerCache] = None,
        return_weights: bool = False,
        score_mod: Optional[ScoreMod] = None,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, T, d_model) → (B, T, d_model) (and (B, H, T, Tk) weights if asked).

        ``mask=None`` is bidirectional attention (every token sees every token).
        """
        h = x if self.post_norm else self.attn_norm(x)
        a = self.attn(h, mask=mask, rotary=rotary, cache=cache, return_weights=return_weights,
                      score_mod=score_mod, topk=self.topk)
        weights = None
        if return_weights:
            a, weights = a
        if self.post_norm:
            x = self.attn_norm(x + self.resid_dropout(a))
            x = self.mlp_norm(x + self.mlp(x))
        else:
            x = x + self.resid_dropout(a)
            x = x + self.mlp(self.mlp_norm(x))
        return (x, weights) if return_weights else x


DecoderBlock = Block
"""A block under a causal mask (kept as the name decoders import)."""

EncoderBlock = Block
"""A block under a bidirectional (padding-only) mask."""
