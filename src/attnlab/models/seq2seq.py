"""Encoder–decoder transformer (original Transformer, T5), assembled from blocks by config.

    model = EncoderDecoder(cfg)                               # cfg.arch == "encoder_decoder"
    logits = model(src, tgt_in, attention_mask=src_mask)      # teacher forcing: (B, T, V)
    memory = model.encode(src, attention_mask=src_mask)       # Seq2SeqMemory
    cache = model.make_cache(memory)
    step = model.decode(tgt_in[:, :1], cache=cache)           # (B, 1, V); repeat token by token

The encoder is a stack of bidirectional blocks under the source padding mask; the decoder
a stack of causal blocks that also cross-attend to the encoder output. Both read the
same token embedding, and with ``tie_embeddings`` so does the output head. Every
variant (pre/post norm, LayerNorm/RMSNorm, ReLU/GELU/GEGLU MLP, sinusoidal/learned/T5
relative positions, attention scale) is a field of :class:`~attnlab.config.ModelConfig`.

The scale of a tied embedding matrix, which serves both as input embedding and output
projection, is fixed by one rule:

- ``embed_scale: true`` (Vaswani et al.): embeddings are multiplied by √d_model on the way
  in; the head is applied to the decoder output as is;
- ``embed_scale: false`` with ``tie_embeddings: true`` (T5): embeddings enter unscaled and
  the decoder output is multiplied by d_model^-0.5 before the head;
- untied: no scaling of the head's input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.attention import KVCache, LayerCache
from attnlab.attention.cache import place_tokens, real_positions
from attnlab.attention.masks import Mask
from attnlab.config import ModelConfig
from attnlab.models.common import Model
from attnlab.models.stack import StackOutput, TransformerStack, forward_mask


@dataclass
class Seq2SeqMemory:
    """What the encoder hands the decoder.

    Attributes:
        hidden: (B, S, d_model) encoder output.
        mask: (B, S) bool, True at real (non-padding) source tokens.
        padded: whether any source token is padding (False lets cross-attention skip the mask).
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    padded: bool = True

    def select(self, index: torch.Tensor) -> Seq2SeqMemory:
        """The memory of batch rows ``index`` (rows may repeat, e.g. beams)."""
        return Seq2SeqMemory(self.hidden[index], self.mask[index], self.padded)

    def nbytes(self) -> int:
        """Memory held by the tensors."""
        return sum(t.numel() * t.element_size() for t in (self.hidden, self.mask))


class Seq2SeqCache:
    """Decoding state of an :class:`EncoderDecoder`: the memory, a self-attention KV cache and
    one cross-attention cache per decoder layer (the memory's keys and values, projected once).

    Args:
        memory: the encoder output attended over.
        n_layers: decoder layers.
    """

    def __init__(self, memory: Seq2SeqMemory, n_layers: int):
        self.memory = memory
        self.self_attn = KVCache(n_layers)
        self.cross = [LayerCache() for _ in range(n_layers)]

    @property
    def length(self) -> int:
        """Decoder tokens consumed so far (positions of new tokens start here)."""
        return self.self_attn.length

    def reorder(self, index: torch.Tensor) -> None:
        """Keep (or repeat) batch rows ``index`` of everything, memory included (beam search)."""
        self.memory = self.memory.select(index)
        self.self_attn.reorder(index)
        for layer in self.cross:
            layer.reorder(index)

    def nbytes(self) -> int:
        """Memory held by the cached tensors (memory, self and cross keys/values)."""
        return self.memory.nbytes() + self.self_attn.nbytes() + sum(c.nbytes() for c in self.cross)


def _check_one_run(valid: torch.Tensor) -> None:
    """Raise unless each row of a (B, S) bool source mask holds one run of real tokens.

    Padding then sits on the left, the right, or both, so relative schemes (T5 bias, ALiBi),
    which see distances in the padded layout, see a row's own distances.
    """
    runs = valid[:, 0].long() + (valid[:, 1:] & ~valid[:, :-1]).sum(dim=1)  # (B,) runs of real tokens
    if not bool((runs == 1).all()):
        raise ValueError("attention_mask must mark one run of real tokens (1) in each source row, padded with 0 "
                         "on the left or right only; remove padding between tokens and all-padding rows")


class Seq2SeqStack(TransformerStack, nn.Module):
    """Positions → blocks → final norm (pre-norm only): the encoder or the decoder of an
    :class:`EncoderDecoder`. It takes embedded tokens; the embedding is shared and lives outside.

    Args:
        cfg: the architecture.
        n_layer: number of blocks.
        decoder: causal self-attention and a cross-attention sublayer in every block
            (relative position bias and ALiBi one-sided); else bidirectional blocks.
    """

    def __init__(self, cfg: ModelConfig, n_layer: int, *, decoder: bool):
        super().__init__()
        self.config = cfg
        self.init_positions(cfg, causal=decoder)
        self.init_blocks(cfg, n_layer, cross=decoder)

    @property
    def is_decoder(self) -> bool:
        """Whether this is the decoder (causal, cross-attending) stack."""
        return self.causal

    def forward(
        self,
        x: torch.Tensor,
        *,
        start: int = 0,
        positions: torch.Tensor | None = None,
        mask: Mask | None = None,
        context: torch.Tensor | None = None,
        context_mask: Mask | None = None,
        cache: KVCache | None = None,
        cross_caches: list[LayerCache] | None = None,
        return_weights: bool = False,
    ) -> StackOutput:
        """Run the stack.

        Args:
            x: (B, T, d_model) embedded tokens, at positions ``start .. start + T - 1``.
            start: position of the first token (tokens already in ``cache``).
            positions: (B, T) per-row positions instead (padded sources: each row's
                positions count its real tokens only); overrides ``start``.
            mask: self-attention mask.
            context: (B, S, d_model) encoder output (decoder only).
            context_mask: which context positions are real.
            cache: self-attention caches, one layer per block.
            cross_caches: cross-attention caches, one per block.
            return_weights: collect the attention weights.

        Returns:
            ``(hidden (B, T, d_model), self-attention weights per layer, cross weights per layer)``
            (empty lists unless ``return_weights``).
        """
        if positions is None:
            positions = torch.arange(start, start + x.shape[1], device=x.device)  # (T,)
        return self.run_blocks(self.embed_positions(x, positions), positions, mask=mask, score_mod=self.score_mod(),
                               cache=cache, context=context, context_mask=context_mask, cross_caches=cross_caches,
                               return_weights=return_weights)


class EncoderDecoder(Model):
    """Shared token embedding → encoder stack; → decoder stack (cross-attending) → LM head.

    Implements the encoder–decoder protocol of :mod:`attnlab.generate` (``is_encoder_decoder``,
    ``decoder_start_id``, ``max_context``, ``encode``, ``make_cache``, ``decode``), so greedy,
    sampled and beam-search decoding come from there. See the module docstring for how a tied
    embedding is scaled.

    Args:
        cfg: the architecture; ``cfg.arch`` must be ``"encoder_decoder"``. The encoder has
            ``n_layer`` blocks, the decoder ``n_decoder_layer`` (default ``n_layer``);
            ``block_size`` bounds both the source and the decoder length.
    """

    is_encoder_decoder = True
    accepts_padding = True  # decode takes left-padded decoder prefixes (see attnlab.models.protocols)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch != "encoder_decoder":
            raise ValueError(f"EncoderDecoder needs model.arch=encoder_decoder, got '{cfg.arch}'")
        self.config = cfg
        self.decoder_start_id = cfg.decoder_start_id
        self.max_context = cfg.block_size
        d = cfg.d_model
        self.embed_scale = math.sqrt(d) if cfg.embed_scale else 1.0
        self.head_scale = d ** -0.5 if cfg.tie_embeddings and not cfg.embed_scale else 1.0
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.encoder = Seq2SeqStack(cfg, cfg.n_layer, decoder=False)
        self.decoder = Seq2SeqStack(cfg, cfg.n_decoder_layer or cfg.n_layer, decoder=True)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform matrices (as the original Transformer), zero biases, unit norm gains;
        the token embedding is sized for its use: N(0, 1/d_model) when scaled up by √d_model,
        N(0, 1) when tied to a head whose input is scaled by d_model^-0.5 (T5), else N(0, 0.02)."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith("weight"):  # norm gains
                nn.init.ones_(p)
        cfg = self.config
        std = cfg.d_model ** -0.5 if cfg.embed_scale else 1.0 if cfg.tie_embeddings else 0.02
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=std)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(ids)  # (B, T, D)
        return x * self.embed_scale if self.embed_scale != 1.0 else x

    def _encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, return_weights: bool
    ) -> tuple[Seq2SeqMemory, list[torch.Tensor]]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, S), got shape {tuple(input_ids.shape)}")
        s = input_ids.shape[1]
        if s > self.config.block_size:
            raise ValueError(f"source of {s} tokens exceeds the encoder's context of {self.config.block_size} "
                             "(model.block_size); truncate the input")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        mask, positions = self.encoder.attention_mask(), None
        if attention_mask is None:
            valid, padded = torch.ones_like(input_ids, dtype=torch.bool), False
        else:
            valid = attention_mask.bool()
            padded = not bool(valid.all())
            if padded:
                _check_one_run(valid)
                positions = real_positions(valid)  # (B, S)
                if self.config.attention.global_tokens and not bool(valid[:, 0].all()):
                    raise ValueError("a left-padded source is not supported with attention.global_tokens (global "
                                     "positions would fall on padding); pad sources on the right")
                mask = forward_mask(mask, padding=valid)
        hidden, weights, _ = self.encoder(self._embed(input_ids), positions=positions, mask=mask,
                                          return_weights=return_weights)
        return Seq2SeqMemory(hidden, valid, padded), weights

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Seq2SeqMemory:
        """Run the encoder.

        Args:
            input_ids: (B, S) source token ids.
            attention_mask: (B, S) 1 for real tokens, 0 for padding, on either side (or both)
                of one run of real tokens per row; None: no padding. Padding is never attended
                to and each row's positions count its real tokens only, so a padded row
                encodes as it would alone.

        Returns:
            A :class:`Seq2SeqMemory` (hidden states at padding positions are not meaningful).

        Raises:
            ValueError: a source longer than ``block_size``, a mask of another shape, a row
                whose real tokens are not one run (or that has none), or left padding with
                ``attention.global_tokens``.
        """
        return self._encode(input_ids, attention_mask, False)[0]

    def make_cache(self, memory: Seq2SeqMemory) -> Seq2SeqCache:
        """An empty decoding cache over ``memory`` for :meth:`decode`."""
        return Seq2SeqCache(memory, len(self.decoder.blocks))

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        cache: Seq2SeqCache | None = None,
        *,
        memory: Seq2SeqMemory | None = None,
        return_weights: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Next-token logits of the decoder.

        Args:
            decoder_input_ids: (B, T) decoder tokens (starting with ``decoder_start_id``). With a
                ``cache`` these are the new tokens, placed after the cached ones.
            cache: a :class:`Seq2SeqCache` from :meth:`make_cache`, updated in place.
            memory: the encoder output, to decode a whole sequence without a cache.
            return_weights: also return ``{"decoder_self": [...], "cross": [...]}``, per layer
                (B, H, T, Tk) and (B, H, T, S) (runs the eager backend).
            attention_mask: (B, cached + T) 1/0 mask of real decoder tokens over the cached and
                the new ones, for left-padded decoder prefixes of different lengths: padding
                is never attended to and each row's positions count its real tokens only, so a
                row decodes as it would alone.

        Returns:
            (B, T, vocab_size) logits, or ``(logits, weights)``.

        Raises:
            ValueError: not exactly one of ``cache`` / ``memory``, a batch size other than the
                memory's, a decoder sequence longer than ``max_context``, or an
                ``attention_mask`` of another shape or with ``attention.global_tokens``.
        """
        if (cache is None) == (memory is None):
            raise ValueError("decode needs exactly one of cache= (from make_cache) or memory= (from encode)")
        mem = cache.memory if cache is not None else memory
        if decoder_input_ids.dim() != 2 or decoder_input_ids.shape[0] != mem.hidden.shape[0]:
            raise ValueError(f"decoder_input_ids must be (B, T) with the memory's batch of {mem.hidden.shape[0]}, "
                             f"got shape {tuple(decoder_input_ids.shape)}")
        start = cache.length if cache is not None else 0
        t = decoder_input_ids.shape[1]
        if start + t > self.max_context:
            raise ValueError(f"decoder sequence of {start + t} tokens exceeds the model's decoder context of "
                             f"{self.max_context} (model.block_size)")
        if attention_mask is not None and self.config.attention.global_tokens:
            raise ValueError("a decoder attention_mask is not supported with attention.global_tokens (global "
                             "positions would fall on padding); use decoder prefixes of equal length")
        where = place_tokens(start, mem.hidden.shape[0], t, self.decoder.attention_mask(), None, attention_mask,
                             decoder_input_ids.device)
        positions, mask = where.positions, forward_mask(where.mask, padding=where.padding)  # (T,) or (B, T)
        hidden, self_w, cross_w = self.decoder(
            self._embed(decoder_input_ids), start=start, positions=positions, mask=mask,
            context=mem.hidden, context_mask=forward_mask(None, padding=mem.mask) if mem.padded else None,
            cache=cache.self_attn if cache is not None else None,
            cross_caches=cache.cross if cache is not None else None, return_weights=return_weights,
        )
        if self.head_scale != 1.0:
            hidden = hidden * self.head_scale
        logits = self.lm_head(hidden)  # (B, T, V)
        return (logits, {"decoder_self": self_w, "cross": cross_w}) if return_weights else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Teacher-forced logits (no cache).

        Args:
            input_ids: (B, S) source ids.
            decoder_input_ids: (B, T) decoder inputs: the target shifted right behind
                ``decoder_start_id``.
            attention_mask: (B, S) 1/0 source padding mask (None: no padding).
            return_weights: also return ``{"encoder": [...], "decoder_self": [...], "cross": [...]}``,
                each a list of per-layer (B, H, Tq, Tk) weights (runs the eager backend).

        Returns:
            (B, T, vocab_size) logits, or ``(logits, weights)``.
        """
        memory, enc_w = self._encode(input_ids, attention_mask, return_weights)
        out = self.decode(decoder_input_ids, memory=memory, return_weights=return_weights)
        if not return_weights:
            return out
        logits, weights = out
        return logits, {"encoder": enc_w, **weights}


__all__ = ["EncoderDecoder", "Seq2SeqCache", "Seq2SeqMemory", "Seq2SeqStack"]
