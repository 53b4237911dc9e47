"""Decoder-only language model (GPT / Llama style), assembled from blocks by config."""

from __future__ import annotations

import math

import torch
from torch import nn

from attnlab.attention import KVCache
from attnlab.attention.cache import LayerCache, StaticKVCache, place_tokens
from attnlab.attention.linear import LinearState
from attnlab.config import ModelConfig
from attnlab.models.common import Model
from attnlab.models.stack import TransformerStack, forward_mask


class DecoderLM(TransformerStack, Model):
    """Token embedding → N pre-norm decoder blocks → final norm → LM head.

    Every variant (learned / sinusoidal / RoPE / ALiBi / relative-bias positions,
    LayerNorm / RMSNorm, GELU / SwiGLU, MHA / GQA / MQA, softmax or linear mixer,
    sliding window / local+global attention, soft-capping, top-k, tied or untied head)
    is a field of :class:`~attnlab.config.ModelConfig`, read here once.

    Args:
        cfg: the architecture.
    """

    accepts_padding = True  # forward takes a left-padding attention_mask (see attnlab.models.protocols)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.max_context = cfg.block_size
        if cfg.rope_scaling != "none":
            self.max_context = int(cfg.block_size * cfg.rope_scaling_factor)
        self.init_positions(cfg, causal=True)
        self.init_blocks(cfg, cfg.n_layer)  # blocks, then final_norm before the head
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

    def make_cache(self) -> KVCache:
        """An empty KV cache for :meth:`forward` (recurrent states for linear attention)."""
        return KVCache(len(self.blocks), LinearState if self.config.mixer == "linear" else LayerCache)

    def make_static_cache(self, batch_size: int, max_len: int, *, dtype: torch.dtype | None = None,
                          device: torch.device | str | None = None) -> StaticKVCache:
        """A preallocated cache of ``max_len`` tokens per row, for compiled decoding (see :mod:`attnlab.generate.fast`).

        Args:
            batch_size: rows, fixed for the cache's life.
            max_len: prompt + generated tokens per row, at most :attr:`max_context`.
            dtype: buffer dtype (default: the model's).
            device: buffer device (default: the model's).

        Raises:
            ValueError: a linear mixer (it keeps a recurrent state, not keys and values) or
                ``max_len`` beyond the model's context.
        """
        if self.config.mixer == "linear":
            raise ValueError("a static KV cache needs softmax attention; mixer=linear keeps a recurrent state "
                             "(use make_cache() and the plain generate path)")
        if not 1 <= max_len <= self.max_context:
            raise ValueError(f"static cache max_len {max_len} must be in 1..{self.max_context} (the model's context)")
        weight = self.tok_emb.weight
        return StaticKVCache(len(self.blocks), batch_size, self.config.kv_heads, max_len, self.config.head_dim,
                             dtype=dtype or weight.dtype, device=device or weight.device)

    def _check_padding(self) -> None:
        """Raise unless the model can honour a padding attention_mask."""
        if self.config.mixer == "linear":
            raise ValueError("a padding attention_mask is not supported with mixer=linear (its recurrent state "
                             "would absorb the padding); generate prompts of equal length without a mask")
        if self.config.attention.window is not None and self.config.attention.global_tokens:
            raise ValueError("a padding attention_mask is not supported with attention.global_tokens (global "
                             "positions would fall on padding); generate prompts of equal length without a mask")

    def _check_documents(self, document_ids: torch.Tensor, input_ids: torch.Tensor, cache: KVCache | None,
                         attention_mask: torch.Tensor | None) -> None:
        """Raise unless ``document_ids`` can mask this call (full packed windows, softmax attention)."""
        if cache is not None or attention_mask is not None:
            what = "a cache" if cache is not None else "an attention_mask (padding)"
            raise ValueError(f"document_ids masks packed training windows and cannot be combined with {what}; "
                             f"drop document_ids to decode or to run padded batches")
        if document_ids.shape != input_ids.shape:
            raise ValueError(f"document_ids must be (B, T) like input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(document_ids.shape)}")
        if self.config.mixer == "linear":
            raise ValueError("document_ids needs softmax attention (mixer=linear supports only a causal mask); "
                             "use mixer=softmax or drop document_ids")

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        return_weights: bool = False,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Next-token logits.

        Args:
            input_ids: (B, T) token ids. With a ``cache`` these are the new tokens,
                placed after the cached ones.
            cache: a :class:`~attnlab.attention.KVCache` from :meth:`make_cache` or a
                :class:`~attnlab.attention.cache.StaticKVCache` from :meth:`make_static_cache`,
                updated in place; it places the new tokens (positions, mask).
            return_weights: also return each layer's (B, H, T, Tk) attention weights
                (runs the eager backend).
            attention_mask: (B, cached + T) 1/0 mask of real tokens over the cached and
                the new tokens, for left-padded batches: padding is never attended to and
                each row's positions count its real tokens only (its first real token is
                at position 0), so a row decodes as it would alone.
            document_ids: (B, T) document number of every token of packed training windows
                (:func:`attnlab.data.packing.document_ids`): a token attends only to earlier
                tokens of its own document (the model's mask AND
                :func:`~attnlab.attention.masks.document`). Positions are not reset per
                document: they still count from the window's start. Training only: not with a
                ``cache`` or an ``attention_mask``.

        Returns:
            (B, T, vocab_size) logits, or ``(logits, [weights per layer])``.

        Raises:
            ValueError: if the total length (padding included) would exceed ``block_size``,
                or ``attention_mask`` is malformed or given to a linear mixer or global tokens,
                or ``document_ids`` is not (B, T) or comes with a ``cache``, an ``attention_mask``
                or a linear mixer.
        """
        b, t = input_ids.shape
        total = t if cache is None else cache.length_after(t)  # None: not known without a host sync
        if total is not None and total > self.max_context:
            raise ValueError(
                f"sequence of {total} tokens exceeds the model's context of {self.max_context} (model.block_size"
                + (", times model.rope_scaling_factor)" if self.max_context != self.config.block_size else ")")
            )
        if attention_mask is not None:
            self._check_padding()
        if document_ids is not None:
            self._check_documents(document_ids, input_ids, cache, attention_mask)
        mask, score_mod = self.attention_mask(), self.score_mod()  # configured pattern, position bias
        where = (place_tokens(0, b, t, mask, score_mod, attention_mask, input_ids.device) if cache is None
                 else cache.place(b, t, mask, score_mod, attention_mask, input_ids.device))
        mask = forward_mask(where.mask, padding=where.padding, document_ids=document_ids)  # what new tokens see
        x = self.embed_positions(self.tok_emb(input_ids), where.positions)  # (B, T, D); positions (T,) or (B, T)
        out = self.run_blocks(x, where.positions, mask=mask, score_mod=where.score_mod, cache=cache,
                              return_weights=return_weights)
        logits = self.lm_head(out.hidden)  # (B, T, V)
        return (logits, out.weights) if return_weights else logits
