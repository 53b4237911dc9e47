"""Decoder-only language model (GPT / Llama style), assembled from blocks by config."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from attnlab.attention import KVCache, build_positions, causal
from attnlab.blocks import DecoderBlock
from attnlab.config import ModelConfig
from attnlab.layers import build_norm


class DecoderLM(nn.Module):
    """Token embedding → N pre-norm decoder blocks → final norm → LM head.

    Every variant (learned / sinusoidal / RoPE positions, LayerNorm / RMSNorm,
    GELU / SwiGLU, MHA / GQA / MQA, tied or untied head) is a field of
    :class:`~attnlab.config.ModelConfig`, read here once.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = build_positions(cfg.position, cfg.block_size, cfg.d_model, cfg.head_dim, cfg.rope_theta)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layer))
        self.final_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual output projections
        scaled by 1/sqrt(2·n_layer) so the residual stream's variance does not grow with depth."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scaled = name.endswith(("o_proj.weight", "down_proj.weight"))
                nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer) if scaled else std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith("weight"):  # norm gains
                nn.init.ones_(p)
        if hasattr(self.pos, "weight"):
            nn.init.normal_(self.pos.weight, mean=0.0, std=std / 2)

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameter count (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def make_cache(self) -> KVCache:
        """An empty KV cache for :meth:`forward`."""
        return KVCache(len(self.blocks))

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: Optional[KVCache] = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Next-token logits.

        Args:
            input_ids: (B, T) token ids. With a ``cache`` these are the new tokens,
                placed after the cached ones.
            cache: a :class:`~attnlab.attention.KVCache` from :meth:`make_cache`,
                updated in place.
            return_weights: also return each layer's (B, H, T, Tk) attention weights
                (runs the eager backend).

        Returns:
            (B, T, vocab_size) logits, or ``(logits, [weights per layer])``.

        Raises:
            ValueError: if the total length would exceed ``block_size``.
        """
        b, t = input_ids.shape
        start = cache.length if cache is not None else 0
        if start + t > self.config.block_size:
            raise ValueError(
                f"sequence of {start + t} tokens exceeds the model's context of {self.config.block_size} (model.block_size)"
            )
        positions = torch.arange(start, start + t, device=input_ids.device)  # (T,)
        x = self.tok_emb(input_ids)  # (B, T, D)
        pe = self.pos.embed(positions)
        if pe is not None:
            x = x + pe.to(x.dtype)
        x = self.emb_dropout(x)
        rotary = self.pos.rotary(positions)
        mask = causal()
        all_weights = []
        for i, block in enumerate(self.blocks):
            layer_cache = cache[i] if cache is not None else None
            x = block(x, mask=mask, rotary=rotary, cache=layer_cache, return_weights=return_weights)
            if return_weights:
                x, w = x
                all_weights.append(w)
        logits = self.lm_head(self.final_norm(x))  # (B, T, V)
        return (logits, all_weights) if return_weights else logits
