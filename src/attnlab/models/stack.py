"""The transformer stack every model runs: positions → residual blocks → final norm (→ weights).

:class:`TransformerStack` is a mixin of the models that own a stack (:class:`~attnlab.models.DecoderLM`,
:class:`~attnlab.models.EncoderModel`, :class:`~attnlab.models.VisionTransformer`, and the
encoder and decoder of :class:`~attnlab.models.EncoderDecoder`). Each keeps only what is its
own (embeddings, heads, cache plumbing) and calls, in ``__init__``, :meth:`~TransformerStack.init_positions`
and :meth:`~TransformerStack.init_blocks` where those modules belong in its parameter order, and in
``forward`` :meth:`~TransformerStack.embed_positions` and :meth:`~TransformerStack.run_blocks`.

The stack's modules are the model's own attributes (``pos``, ``emb_dropout``, ``blocks``,
``final_norm``), not a submodule: parameter names stay ``blocks.0.attn.q_proj.weight`` etc.,
which checkpoints and the Hugging Face mappings of :mod:`attnlab.interop` rely on.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import nn

from attnlab.attention.masks import Mask
from attnlab.attention.positions import PositionEncoding
from attnlab.attention.score_mods import ScoreMod
from attnlab.blocks import Block
from attnlab.config import ModelConfig
from attnlab.models.common import add_position_embedding, final_norm_for, positions_for, score_mod_for
from attnlab.models.masking import forward_mask, self_attention_mask


class StackOutput(NamedTuple):
    """What :meth:`TransformerStack.run_blocks` returns.

    Attributes:
        hidden: (B, T, d_model) final-normed states.
        weights: per layer (B, H, T, Tk) self-attention weights (empty unless asked).
        cross_weights: per layer (B, H, T, S) cross-attention weights (cross blocks, if asked).
    """

    hidden: torch.Tensor
    weights: list[torch.Tensor]
    cross_weights: list[torch.Tensor]


class TransformerStack:
    """Mixin for an ``nn.Module``: positions, blocks and final norm, and how a forward runs them.

    Attributes (set by :meth:`init_positions` / :meth:`init_blocks`):
        config: the architecture (set by the model).
        causal: decoder (causal self-attention, one-sided position bias) or encoder.
        pos: the position scheme.
        emb_dropout: dropout on the embedded tokens.
        blocks: the residual blocks.
        final_norm: the norm after the last block (Identity after post-norm blocks).
    """

    config: ModelConfig
    causal: bool
    pos: PositionEncoding
    emb_dropout: nn.Dropout
    blocks: nn.ModuleList
    final_norm: nn.Module

    def init_positions(self, cfg: ModelConfig, *, causal: bool) -> None:
        """Build ``self.pos`` (one-sided in a causal stack, two-sided otherwise)."""
        self.causal = causal
        self.pos = positions_for(cfg, bidirectional=not causal)

    def init_blocks(self, cfg: ModelConfig, n_layer: int, *, cross: bool = False) -> None:
        """Build ``self.emb_dropout``, ``n_layer`` blocks (with cross-attention if ``cross``) and ``self.final_norm``."""
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cross=cross) for _ in range(n_layer))
        self.final_norm = final_norm_for(cfg)

    def attention_mask(self, padding: Optional[torch.Tensor] = None) -> Optional[Mask]:
        """The configured self-attention pattern (causal or not, window, global tokens), AND
        the real keys of ``padding`` ((B, T) 1/0) if given; None = full attention."""
        return forward_mask(self_attention_mask(self.config, causal=self.causal), padding=padding)

    def score_mod(self) -> Optional[ScoreMod]:
        """Position bias (ALiBi, relative) and soft-capping, as one score modification."""
        return score_mod_for(self.pos, self.config)

    def embed_positions(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, T, D) embedded tokens + position vectors (additive schemes), then dropout."""
        return self.emb_dropout(add_position_embedding(self.pos, x, positions))

    def run_blocks(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        *,
        mask: Optional[Mask] = None,
        score_mod: Optional[ScoreMod] = None,
        cache: Optional[object] = None,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[Mask] = None,
        cross_caches: Optional[list] = None,
        return_weights: bool = False,
    ) -> StackOutput:
        """Run every block, then the final norm.

        Args:
            x: (B, T, d_model) the embedded tokens (after :meth:`embed_positions`).
            positions: (T,) or (B, T) positions of the tokens (for RoPE).
            mask: self-attention mask (from :func:`~attnlab.models.masking.forward_mask`).
            score_mod: self-attention score mod (position bias, soft-capping).
            cache: a KV cache indexed by layer (``cache[i]``), or None.
            context: (B, S, d_model) what cross blocks attend to (the encoder output).
            context_mask: which context positions may be attended.
            cross_caches: one cross-attention cache per block, or None.
            return_weights: collect each layer's attention weights (eager backend).

        Returns:
            A :class:`StackOutput`.
        """
        rotary = self.pos.rotary(positions)
        self_w: list[torch.Tensor] = []
        cross_w: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            out: Union[torch.Tensor, tuple] = block(
                x, mask=mask, rotary=rotary, cache=None if cache is None else cache[i], return_weights=return_weights,
                score_mod=score_mod, context=context, context_mask=context_mask,
                cross_cache=None if cross_caches is None else cross_caches[i],
            )
            if not return_weights:
                x = out
                continue
            x, w = out
            if block.cross_attn is None:
                self_w.append(w)  # (B, H, T, Tk)
            else:
                self_w.append(w[0])
                cross_w.append(w[1])  # (B, H, T, S)
        return StackOutput(self.final_norm(x), self_w, cross_w)  # hidden (B, T, D)


__all__ = ["StackOutput", "TransformerStack"]
