"""Encoder-only transformer (BERT style): bidirectional blocks, MLM and classification heads.

    enc = EncoderModel(cfg)                                   # cfg.arch == "encoder"
    hidden = enc(input_ids, attention_mask=am)                # (B, T, d_model)
    mlm = EncoderForMaskedLM(cfg); logits = mlm(input_ids)    # (B, T, vocab_size)
    clf = SequenceClassifier(enc, n_classes=2); clf(input_ids, attention_mask=am)  # (B, 2)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.config import ModelConfig
from attnlab.layers import build_norm
from attnlab.models.common import Model, init_bert_weights
from attnlab.models.stack import TransformerStack, add_position_embedding


class EncoderModel(TransformerStack, nn.Module):
    """Token + position (+ token-type) embeddings → LayerNorm → N bidirectional blocks.

    As in BERT the summed embeddings are normalised before the first block. With
    ``cfg.norm_placement == "pre"`` a final norm follows the last block (each pre-norm block
    leaves its output unnormalised); post-norm blocks already end in a norm.

    Args:
        cfg: the architecture; ``cfg.arch`` should be ``"encoder"``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.init_positions(cfg, causal=False)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.emb_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.init_blocks(cfg, cfg.n_layer)
        init_bert_weights(self)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Contextual hidden states.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T) 1 for real tokens, 0 for padding (any side); None: no padding.
            token_type_ids: (B, T) segment ids (zeros when None); needs ``type_vocab_size > 0``.

        Returns:
            (B, T, d_model) hidden states (rows at padding positions are not meaningful).

        Raises:
            ValueError: a sequence longer than ``block_size``, mismatched shapes, or token types
                given to a model without token-type embeddings.
        """
        b, t = input_ids.shape
        if t > self.config.block_size:
            raise ValueError(f"sequence of {t} tokens exceeds the encoder's context of {self.config.block_size} "
                             "(model.block_size); truncate the input")
        for name, extra in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if extra is not None and extra.shape != input_ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(extra.shape)}")
        positions = torch.arange(t, device=input_ids.device)  # (T,)
        x = add_position_embedding(self.pos, self.tok_emb(input_ids), positions)  # (B, T, D)
        if self.type_emb is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.type_emb(types)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but model.type_vocab_size=0; drop them or set type_vocab_size")
        x = self.emb_dropout(self.emb_norm(x))  # BERT normalises the summed embeddings
        mask = self.attention_mask(attention_mask)  # configured pattern AND real keys
        return self.run_blocks(x, positions, mask=mask, score_mod=self.score_mod()).hidden  # (B, T, D)


class MLMHead(nn.Module):
    """BERT's prediction head: dense → GELU → norm → decoder (tied to the word embeddings) + bias.

    Args:
        cfg: the architecture (the GELU is exact unless ``cfg.mlp == "gelu"``).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.approximate = "tanh" if cfg.mlp == "gelu" else "none"
        self.norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) → (B, T, vocab_size) logits."""
        h = self.norm(F.gelu(self.dense(hidden), approximate=self.approximate))
        return self.decoder(h)


class EncoderWithHead(Model):
    """An :class:`EncoderModel` (attribute ``encoder``) with a task head on its hidden states.

    Subclasses (:class:`EncoderForMaskedLM`, :class:`SequenceClassifier`,
    :class:`~attnlab.models.heads.EncoderForQuestionAnswering`) build their head and say in
    :meth:`head_logits` what it makes of the hidden states; the forward pass is this one.
    """

    encoder: EncoderModel

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> Any:
        """The head's logits for (B, T) ids; see :meth:`EncoderModel.forward` for the arguments."""
        return self.head_logits(self.encoder(input_ids, attention_mask, token_type_ids), attention_mask)

    def head_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
        """What the head makes of (B, T, d_model) hidden states (``attention_mask``: the real tokens)."""
        raise NotImplementedError


class EncoderForMaskedLM(EncoderWithHead):
    """:class:`EncoderModel` + :class:`MLMHead`; what :func:`attnlab.models.build` returns for encoders.

    Args:
        cfg: the architecture; with ``cfg.tie_embeddings`` the head's decoder shares the
            word embedding matrix.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.encoder = EncoderModel(cfg)
        self.head = MLMHead(cfg)
        init_bert_weights(self.head)
        if cfg.tie_embeddings:
            self.head.decoder.weight = self.encoder.tok_emb.weight

    def head_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, d_model) → (B, T, vocab_size) logits over the vocabulary at every position.

        Train with :func:`attnlab.data.mlm.mask_tokens` and :func:`attnlab.data.mlm.mlm_loss`.
        """
        return self.head(hidden)


class SequenceClassifier(EncoderWithHead):
    """Classify a sequence: pool the tokens, then pooler (dense → tanh) → dropout → linear.

    Args:
        encoder: the :class:`EncoderModel` to fine-tune.
        n_classes: number of labels.
        dropout: dropout before the classifier (default: the encoder's ``cfg.dropout``).
        pooling: ``"cls"`` reads the first token (BERT's [CLS]); ``"mean"`` averages the real
            tokens (how sentence-transformers such as all-MiniLM-L6-v2 were trained).
    """

    def __init__(self, encoder: EncoderModel, n_classes: int, dropout: float | None = None, pooling: str = "cls"):
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        d = encoder.config.d_model
        self.encoder = encoder
        self.pooling = pooling
        self.pooler = nn.Linear(d, d)
        self.dropout = nn.Dropout(encoder.config.dropout if dropout is None else dropout)
        self.classifier = nn.Linear(d, n_classes)
        init_bert_weights(self.pooler)
        init_bert_weights(self.classifier)

    def head_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) → (B, n_classes) logits (with ``cls`` pooling the first token must be real, e.g. [CLS])."""
        if self.pooling == "cls":
            summary = hidden[:, 0]  # (B, D)
        elif attention_mask is None:
            summary = hidden.mean(1)
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            summary = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
        return self.classifier(self.dropout(torch.tanh(self.pooler(summary))))
