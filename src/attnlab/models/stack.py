"""The transformer stack every model runs: positions → residual blocks → final norm (→ weights),
under the attention mask of the forward pass.

:class:`TransformerStack` is a mixin of the models that own a stack (:class:`~attnlab.models.DecoderLM`,
:class:`~attnlab.models.EncoderModel`, :class:`~attnlab.models.VisionTransformer`, and the
encoder and decoder of :class:`~attnlab.models.EncoderDecoder`). Each keeps only what is its
own (embeddings, heads, cache plumbing): in ``__init__`` it calls :meth:`~TransformerStack.init_positions`
and :meth:`~TransformerStack.init_blocks` where those modules belong in its parameter order, in
``forward`` :meth:`~TransformerStack.embed_positions` and :meth:`~TransformerStack.run_blocks`.
The stack's modules are the model's own attributes (``pos``, ``emb_dropout``, ``blocks``,
``final_norm``), not a submodule: parameter names stay ``blocks.0.attn.q_proj.weight`` etc.,
which checkpoints and the Hugging Face mappings of :mod:`attnlab.interop` rely on.

The mask of one forward pass is built by one function, :func:`forward_mask`: the configured
pattern (:func:`self_attention_mask`: causal or bidirectional, window, global tokens) AND the
real keys (an encoder's padding, or a left-padded decoder batch as
:func:`attnlab.attention.cache.place_tokens` places it) AND the documents of packed windows.
(A :class:`~attnlab.attention.cache.StaticKVCache` rewrites the pattern to absolute slots:
slot bookkeeping, not another restriction.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from attnlab.attention.masks import Mask, document, key_padding, local_global, sliding_window
from attnlab.attention.masks import causal as causal_mask
from attnlab.attention.positions import PositionEncoding, build_positions
from attnlab.attention.score_mods import ScoreMod, softcap
from attnlab.blocks import Block
from attnlab.config import ModelConfig
from attnlab.layers import build_norm


# --- pieces every stack builds from its config ----------------------------------------------
def positions_for(cfg: ModelConfig, *, bidirectional: bool) -> PositionEncoding:
    """The position scheme of ``cfg``, one-sided in decoders and two-sided in encoders.

    ``bidirectional`` matters to the schemes that see the direction of a key: T5 relative
    bias (separate buckets for keys after the query) and ALiBi (``-slope·|i - j|`` instead
    of the causal ``-slope·(i - j)``).
    """
    scaling = None
    if cfg.rope_scaling != "none":
        scaling = {"type": cfg.rope_scaling, "factor": cfg.rope_scaling_factor}
    return build_positions(
        cfg.position, cfg.block_size, cfg.d_model, cfg.head_dim, cfg.rope_theta, n_head=cfg.n_head,
        rope_scaling=scaling, num_buckets=cfg.relative_buckets, max_distance=cfg.relative_max_distance,
        bidirectional=bidirectional,
    )


def add_position_embedding(pos: PositionEncoding, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x + pos.embed(positions)`` for schemes that add vectors (learned, sinusoidal), else ``x``.

    Args:
        pos: the model's position scheme.
        x: (B, T, D) embedded tokens.
        positions: (T,) absolute positions of those tokens.
    """
    pe = pos.embed(positions)  # (T, D) or None
    return x if pe is None else x + pe.to(x.dtype)


def score_mod_for(pos: PositionEncoding, cfg: ModelConfig) -> ScoreMod | None:
    """Position bias (ALiBi, relative) and soft-capping, as one score modification."""
    mod = pos.score_mod()
    if cfg.attention.softcap:
        cap = softcap(cfg.attention.softcap)
        mod = cap if mod is None else mod.then(cap)
    return mod


def final_norm_for(cfg: ModelConfig) -> nn.Module:
    """The norm after the last block: pre-norm blocks leave their output unnormalised, so a
    norm follows them; post-norm blocks already end in one (``nn.Identity``)."""
    if cfg.norm_placement == "pre":
        return build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
    return nn.Identity()


# --- the mask of one forward pass --------------------------------------------------------------
def self_attention_mask(cfg: ModelConfig, *, causal: bool) -> Mask | None:
    """The self-attention pattern of ``cfg.attention``, before any padding.

    Causal (decoders) or bidirectional (encoders), restricted to a sliding window of
    ``cfg.attention.window`` tokens when one is set, plus ``global_tokens`` that see and
    are seen by every token.

    Args:
        cfg: the architecture.
        causal: whether keys after the query are hidden.

    Returns:
        The mask, or None for full bidirectional attention (no window, not causal).
    """
    a = cfg.attention
    if a.window is None:
        return causal_mask() if causal else None
    if a.global_tokens:
        return local_global(a.window, a.global_tokens, causal=causal)
    return sliding_window(a.window, causal=causal)


def _and(mask: Mask | None, extra: Mask | None) -> Mask | None:
    """``mask & extra``, where None means "no restriction"."""
    if extra is None:
        return mask
    return extra if mask is None else mask & extra


def forward_mask(
    pattern: Mask | None,
    *,
    padding: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
) -> Mask | None:
    """What the tokens of one forward pass may attend to: pattern AND real keys AND same document.

    Args:
        pattern: the model's self-attention pattern (:func:`self_attention_mask`), or None
            for full attention.
        padding: (B, Tk) 1/0 or bool, true at real keys (cached and new ones), or None.
        document_ids: (B, T) document number of every token of packed windows, or None.

    Returns:
        The combined mask, or None when nothing is restricted.
    """
    mask = _and(pattern, None if padding is None else key_padding(padding))
    return _and(mask, None if document_ids is None else document(document_ids))


# --- the stack -------------------------------------------------------------------------------
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
        """Build ``self.emb_dropout``, ``n_layer`` blocks (cross-attending if ``cross``) and ``self.final_norm``."""
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cross=cross) for _ in range(n_layer))
        self.final_norm = final_norm_for(cfg)

    def attention_mask(self, padding: torch.Tensor | None = None) -> Mask | None:
        """The configured self-attention pattern (causal or not, window, global tokens), AND
        the real keys of ``padding`` ((B, T) 1/0) if given; None = full attention."""
        return forward_mask(self_attention_mask(self.config, causal=self.causal), padding=padding)

    def score_mod(self) -> ScoreMod | None:
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
        mask: Mask | None = None,
        score_mod: ScoreMod | None = None,
        cache: Any | None = None,
        context: torch.Tensor | None = None,
        context_mask: Mask | None = None,
        cross_caches: list | None = None,
        return_weights: bool = False,
    ) -> StackOutput:
        """Run every block, then the final norm.

        Args:
            x: (B, T, d_model) the embedded tokens (after :meth:`embed_positions`).
            positions: (T,) or (B, T) positions of the tokens (for RoPE).
            mask: self-attention mask (from :func:`forward_mask`).
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
            out: torch.Tensor | tuple = block(
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


__all__ = [
    "StackOutput", "TransformerStack", "add_position_embedding", "final_norm_for", "forward_mask", "positions_for",
    "score_mod_for", "self_attention_mask",
]
