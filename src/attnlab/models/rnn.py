"""Recurrent baselines: an LSTM/GRU language model and an RNN encoder–decoder with attention.

These are the models attention was invented for (Bahdanau et al. 2015, Luong et al.
2015). The seq2seq decoder compares its state with every encoder output through a
score function from :mod:`attnlab.attention.scoring` — additive (Bahdanau),
general/dot (Luong) — and mixes the encoder outputs with the resulting weights.

Both models decode step by step with an explicit state, so "cached" (one token at a
time) and "uncached" (whole sequence, teacher forced) runs give the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from attnlab.attention.scoring import attend, build_scoring

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def _rnn(cell: str, d_in: int, d_hidden: int, n_layers: int, dropout: float, bidirectional: bool = False) -> nn.RNNBase:
    if cell not in CELLS:
        raise ValueError(f"unknown cell '{cell}'; choose one of {', '.join(CELLS)}")
    return CELLS[cell](d_in, d_hidden, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0,
                       bidirectional=bidirectional)


class RNNState:
    """The recurrent state of a decoding run (its "KV cache"): hidden (and cell) states.

    Attributes:
        hidden: ``h`` (GRU) or ``(h, c)`` (LSTM), each (layers, B, d_hidden), or None at the start.
        length: tokens consumed so far.
    """

    def __init__(self) -> None:
        self.hidden = None
        self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        if isinstance(self.hidden, tuple):
            self.hidden = tuple(h[:, index] for h in self.hidden)
        elif self.hidden is not None:
            self.hidden = self.hidden[:, index]


@dataclass
class RNNLMConfig:
    """Size of an :class:`RNNLanguageModel` (``block_size`` caps generation length)."""

    vocab_size: int
    d_emb: int = 128
    d_hidden: int = 256
    n_layers: int = 2
    cell: str = "lstm"
    dropout: float = 0.0
    block_size: int = 1024


class RNNLanguageModel(nn.Module):
    """Embedding → multi-layer LSTM/GRU → linear head; ``forward(ids, cache=RNNState)`` → logits.

    Works with :func:`attnlab.generate.generate` (``make_cache`` returns an :class:`RNNState`).
    """

    def __init__(self, cfg: RNNLMConfig):
        super().__init__()
        self.config = cfg
        self.max_context = cfg.block_size
        self.emb = nn.Embedding(cfg.vocab_size, cfg.d_emb)
        self.rnn = _rnn(cfg.cell, cfg.d_emb, cfg.d_hidden, cfg.n_layers, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_hidden, cfg.vocab_size)

    def make_cache(self) -> RNNState:
        return RNNState()

    def forward(self, input_ids: torch.Tensor, *, cache: Optional[RNNState] = None) -> torch.Tensor:
        """(B, T) ids → (B, T, V) logits; with ``cache`` the state carries over between calls."""
        x = self.drop(self.emb(input_ids))  # (B, T, E)
        out, hidden = self.rnn(x, cache.hidden if cache is not None else None)  # (B, T, H)
        if cache is not None:
            cache.hidden, cache.length = hidden, cache.length + input_ids.shape[1]
        return self.head(self.drop(out))  # (B, T, V)


@dataclass
class Seq2SeqConfig:
    """Size and attention style of a :class:`Seq2SeqRNN`.

    Attributes:
        scoring: ``"additive"`` (Bahdanau), ``"general"`` or ``"dot"`` (Luong), ``"concat"``.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_emb: int = 128
    d_hidden: int = 256
    n_layers: int = 1
    cell: str = "gru"
    scoring: str = "additive"
    dropout: float = 0.0


class Seq2SeqRNN(nn.Module):
    """Bidirectional RNN encoder; RNN decoder attending over the encoder outputs at each step.

    Each decoder step (Luong et al.'s "global attention", any score function):
    ``h_t = RNN(emb(y_{t-1}) ‖ h̃_{t-1}, h_{t-1})``, ``a_t = softmax(score(h_t, enc))``,
    ``c_t = a_t · enc``, ``h̃_t = tanh(W [c_t; h_t])``, ``logits = head(h̃_t)`` — with input
    feeding of the previous attentional state h̃.

    Args:
        cfg: sizes, cell and score function.
    """

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.config = cfg
        h = cfg.d_hidden
        self.src_emb = nn.Embedding(cfg.src_vocab_size, cfg.d_emb)
        self.tgt_emb = nn.Embedding(cfg.tgt_vocab_size, cfg.d_emb)
        self.encoder = _rnn(cfg.cell, cfg.d_emb, h // 2, cfg.n_layers, cfg.dropout, bidirectional=True)
        self.decoder = _rnn(cfg.cell, cfg.d_emb + h, h, cfg.n_layers, cfg.dropout)
        self.score = build_scoring(cfg.scoring, h, h)
        self.combine = nn.Linear(2 * h, h, bias=False)
        self.head = nn.Linear(h, cfg.tgt_vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, src_ids: torch.Tensor, src_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) source ids (and (B, S) bool mask of real tokens) → ((B, S, H) memory, mask)."""
        if src_mask is None:
            src_mask = torch.ones_like(src_ids, dtype=torch.bool)
        memory, _ = self.encoder(self.drop(self.src_emb(src_ids)))  # (B, S, H): both directions concatenated
        return memory, src_mask.bool()

    def start_state(self, batch: int, device: torch.device) -> RNNState:
        """A fresh decoding state (with the input-feeding vector h̃ = 0)."""
        state = RNNState()
        state.feed = torch.zeros(batch, self.config.d_hidden, device=device)  # (B, H)
        return state

    def decode(
        self, tgt_ids: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor, state: RNNState,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder over (B, T) target ids from ``state`` (updated in place).

        Returns:
            (B, T, V) logits, and (B, T, S) attention weights if asked.
        """
        emb = self.drop(self.tgt_emb(tgt_ids))  # (B, T, E)
        logits, weights = [], []
        mask = src_mask[:, None, :]  # (B, 1, S)
        for t in range(tgt_ids.shape[1]):
            step_in = torch.cat((emb[:, t], state.feed), dim=-1)[:, None]  # (B, 1, E + H)
            out, state.hidden = self.decoder(step_in, state.hidden)  # (B, 1, H)
            context, w = attend(self.score(out, memory), memory, mask)  # (B, 1, H), (B, 1, S)
            feed = torch.tanh(self.combine(torch.cat((context, out), dim=-1)))  # (B, 1, H)
            state.feed = feed[:, 0]
            logits.append(self.head(self.drop(feed)))
            weights.append(w)
        state.length += tgt_ids.shape[1]
        logits_t = torch.cat(logits, dim=1)  # (B, T, V)
        return (logits_t, torch.cat(weights, dim=1)) if return_weights else logits_t

    def forward(
        self, src_ids: torch.Tensor, tgt_ids: torch.Tensor, src_mask: Optional[torch.Tensor] = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits (B, T, V) for target inputs ``tgt_ids`` given the source."""
        memory, mask = self.encode(src_ids, src_mask)
        state = self.start_state(src_ids.shape[0], src_ids.device)
        return self.decode(tgt_ids, memory, mask, state, return_weights)

    @torch.no_grad()
    def greedy(self, src_ids: torch.Tensor, bos_id: int, eos_id: int, max_len: int,
               src_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Greedy translation, one cached step at a time; rows stop at ``eos_id``. Returns (B, ≤ max_len)."""
        memory, mask = self.encode(src_ids, src_mask)
        state = self.start_state(src_ids.shape[0], src_ids.device)
        tok = torch.full((src_ids.shape[0], 1), bos_id, dtype=torch.long, device=src_ids.device)
        done = torch.zeros(src_ids.shape[0], dtype=torch.bool, device=src_ids.device)
        out = []
        for _ in range(max_len):
            nxt = self.decode(tok, memory, mask, state)[:, -1].argmax(-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            out.append(nxt)
            done |= nxt == eos_id
            tok = nxt[:, None]
            if bool(done.all()):
                break
        return torch.stack(out, dim=1)
