"""Recurrent baselines: an LSTM/GRU language model and an RNN encoder–decoder with attention.

These are the models attention was invented for (Bahdanau et al. 2015, Luong et al.
2015). The seq2seq decoder compares its state with every encoder output through a
score function from :mod:`attnlab.attention.scoring` — additive (Bahdanau),
general/dot (Luong) — and mixes the encoder outputs with the resulting weights.

Both models decode step by step with an explicit state, so "cached" (one token at a
time) and "uncached" (whole sequence, teacher forced) runs give the same logits. Both skip
padding (an ``attention_mask``, on any side) by packing each row's real tokens
(:func:`run_masked`), so a padded row gives what it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnlab.attention.scoring import attend, build_scoring

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def _rnn(cell: str, d_in: int, d_hidden: int, n_layers: int, dropout: float, bidirectional: bool = False) -> nn.RNNBase:
    if cell not in CELLS:
        raise ValueError(f"unknown cell '{cell}'; choose one of {', '.join(CELLS)}")
    return CELLS[cell](d_in, d_hidden, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0,
                       bidirectional=bidirectional)


def _select_rows(keep: torch.Tensor, new, old):
    """State ``new`` where ``keep`` (B,) is True, else ``old`` (None: zeros); tensors are (layers, B, H)."""
    if isinstance(new, tuple):
        olds = (None,) * len(new) if old is None else old
        return tuple(_select_rows(keep, n, o) for n, o in zip(new, olds, strict=False))
    return torch.where(keep[None, :, None], new, torch.zeros_like(new) if old is None else old)


def run_masked(rnn: nn.RNNBase, x: torch.Tensor, valid: torch.Tensor | None, hidden=None):
    """Run ``rnn`` over the real tokens of each row only, skipping padding wherever it sits.

    The real tokens of each row are moved to the front (in order), packed and run, and the
    outputs put back in place: a row's outputs and final state are those of its real tokens
    alone, as if padding were not there (the state is carried across padding unchanged).

    Args:
        rnn: a batch-first LSTM/GRU.
        x: (B, T, E) inputs.
        valid: (B, T) bool, True at real tokens; None: all real.
        hidden: initial state (``h`` or ``(h, c)``, each (layers, B, H)), or None (zeros).

    Returns:
        ``(outputs (B, T, H·directions), final state)``; outputs are 0 at padding, and a row
        without real tokens keeps its initial state.
    """
    if valid is None or bool(valid.all()):
        return rnn(x, hidden)
    b, t, _ = x.shape
    lengths = valid.sum(dim=1)  # (B,)
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices  # (B, T) real positions first
    front = x.gather(1, order[..., None].expand_as(x))  # (B, T, E) real tokens first
    packed = nn.utils.rnn.pack_padded_sequence(front, lengths.clamp_min(1).cpu(), batch_first=True,
                                               enforce_sorted=False)
    out, final = rnn(packed, hidden)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=t)  # (B, T, H), 0 past length
    empty = lengths == 0  # (B,) rows run on one padding token only to satisfy packing: undo it
    if bool(empty.any()):
        out = out.masked_fill(empty[:, None, None], 0.0)
        final = _select_rows(~empty, final, hidden)
    outputs = torch.zeros_like(out).scatter(1, order[..., None].expand_as(out), out)  # (B, T, H) back in place
    return outputs, final


class RNNState:
    """The recurrent state of a decoding run (its "KV cache"): hidden (and cell) states.

    Attributes:
        hidden: ``h`` (GRU) or ``(h, c)`` (LSTM), each (layers, B, d_hidden), or None at the start.
        length: tokens consumed so far.
        joinable: False — a running batch cannot take new rows (see ``Session.join``).
    """

    joinable = False

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

    Works with :func:`attnlab.generate.generate` (``make_cache`` returns an :class:`RNNState`),
    left-padded prompt batches included: the state skips padding (``attention_mask``).
    """

    accepts_padding = True  # forward takes a left-padding attention_mask (see attnlab.models.protocols)

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

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: RNNState | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits.

        Args:
            input_ids: (B, T) token ids; with a ``cache`` they follow the consumed ones.
            cache: an :class:`RNNState` from :meth:`make_cache`, updated in place (the state
                carries over between calls).
            attention_mask: (B, cached + T) 1/0 mask of real tokens over the consumed and the
                new tokens (e.g. a left-padded prompt batch): the state skips padding (it
                passes through unchanged), so a row decodes as it would alone.

        Returns:
            (B, T, V) logits (meaningless at padding).

        Raises:
            ValueError: an ``attention_mask`` of another shape.
        """
        b, t = input_ids.shape
        valid = None
        if attention_mask is not None:
            start = cache.length if cache is not None else 0
            if attention_mask.shape != (b, start + t):
                raise ValueError(f"attention_mask must be (B, cached + T) = {(b, start + t)}, "
                                 f"got {tuple(attention_mask.shape)}")
            valid = attention_mask[:, start:].bool()  # (B, T)
        x = self.drop(self.emb(input_ids))  # (B, T, E)
        out, hidden = run_masked(self.rnn, x, valid, cache.hidden if cache is not None else None)  # (B, T, H)
        if cache is not None:
            cache.hidden, cache.length = hidden, cache.length + input_ids.shape[1]
        return self.head(self.drop(out))  # (B, T, V)


@dataclass
class Seq2SeqConfig:
    """Size and attention style of a :class:`Seq2SeqRNN`.

    Attributes:
        scoring: ``"additive"`` (Bahdanau), ``"general"`` or ``"dot"`` (Luong), ``"concat"``.
        decoder_start_id: the target-side token the decoder starts from (a BOS id of the
            target vocabulary); :func:`attnlab.generate.generate` begins every output with it.
        max_len: the longest decoder input (start token included) generation may build.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_emb: int = 128
    d_hidden: int = 256
    n_layers: int = 1
    cell: str = "gru"
    scoring: str = "additive"
    dropout: float = 0.0
    decoder_start_id: int = 1
    max_len: int = 256


@dataclass
class RNNMemory:
    """What the encoder hands the decoder: its outputs and which source positions are real.

    Attributes:
        outputs: (B, S, H) encoder outputs (both directions concatenated).
        mask: (B, S) bool, True at real (non-padding) source tokens.
    """

    outputs: torch.Tensor
    mask: torch.Tensor

    def select(self, index: torch.Tensor) -> RNNMemory:
        """The memory of batch rows ``index`` (rows may repeat)."""
        return RNNMemory(self.outputs[index], self.mask[index])


class Seq2SeqState(RNNState):
    """A seq2seq decoding state: the encoder memory, the decoder's hidden state and the
    input-feeding vector h̃ of the previous step (zeros at the start).

    Attributes:
        memory: the :class:`RNNMemory` attended over.
        feed: (B, H) previous attentional state.
    """

    def __init__(self, memory: RNNMemory, d_hidden: int):
        super().__init__()
        self.memory = memory
        self.feed = memory.outputs.new_zeros(memory.outputs.shape[0], d_hidden)  # (B, H)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep (or repeat) batch rows ``index`` of everything, memory included (beam search)."""
        super().reorder(index)
        self.memory = self.memory.select(index)
        self.feed = self.feed[index]


class Seq2SeqRNN(nn.Module):
    """Bidirectional RNN encoder; RNN decoder attending over the encoder outputs at each step.

    Each decoder step (Luong et al.'s "global attention", any score function):
    ``h_t = RNN(emb(y_{t-1}) ‖ h̃_{t-1}, h_{t-1})``, ``a_t = softmax(score(h_t, enc))``,
    ``c_t = a_t · enc``, ``h̃_t = tanh(W [c_t; h_t])``, ``logits = head(h̃_t)`` — with input
    feeding of the previous attentional state h̃.

    Implements the encoder–decoder protocol of :func:`attnlab.generate.generate`
    (``is_encoder_decoder``, ``decoder_start_id``, ``max_context``, ``encode``,
    ``make_cache``, ``decode``), so greedy, sampled and beam-search decoding come from there.

    Args:
        cfg: sizes, cell and score function.
    """

    is_encoder_decoder = True
    accepts_padding = True  # decode takes left-padded target prefixes (see attnlab.models.protocols)

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.config = cfg
        self.decoder_start_id = cfg.decoder_start_id
        self.max_context = cfg.max_len
        h = cfg.d_hidden
        self.src_emb = nn.Embedding(cfg.src_vocab_size, cfg.d_emb)
        self.tgt_emb = nn.Embedding(cfg.tgt_vocab_size, cfg.d_emb)
        self.encoder = _rnn(cfg.cell, cfg.d_emb, h // 2, cfg.n_layers, cfg.dropout, bidirectional=True)
        self.decoder = _rnn(cfg.cell, cfg.d_emb + h, h, cfg.n_layers, cfg.dropout)
        self.score = build_scoring(cfg.scoring, h, h)
        self.combine = nn.Linear(2 * h, h, bias=False)
        self.head = nn.Linear(h, cfg.tgt_vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> RNNMemory:
        """(B, S) source ids (and (B, S) 1/0 mask of real tokens) → the decoder's memory.

        Padding may sit anywhere (left, right): each row's real tokens are packed and
        encoded on their own, so both directions start at the row's own ends and a padded
        row encodes exactly as it would alone.

        Raises:
            ValueError: a mask of another shape, or a row without real tokens.
        """
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("attention_mask has a source row without real tokens (all 0); give every row at "
                             "least one token")
        outputs, _ = run_masked(self.encoder, self.drop(self.src_emb(input_ids)), mask)  # (B, S, H)
        return RNNMemory(outputs, mask)  # outputs are 0 at padding

    def make_cache(self, memory: RNNMemory) -> Seq2SeqState:
        """A fresh decoding state over ``memory`` (what :meth:`decode` continues from)."""
        return Seq2SeqState(memory, self.config.d_hidden)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        cache: Seq2SeqState | None = None,
        *,
        memory: RNNMemory | None = None,
        return_weights: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder over (B, T) target ids.

        Args:
            decoder_input_ids: (B, T) target ids; with a ``cache`` they follow the consumed ones.
            cache: a state from :meth:`make_cache`, updated in place.
            memory: start from scratch over this memory instead (exactly one of the two).
            return_weights: also return the (B, T, S) attention weights (the alignment).
            attention_mask: (B, cached + T) 1/0 mask of real target tokens over the consumed
                and the new ones (e.g. left-padded decoder prefixes): the state passes through
                padding unchanged, so a row decodes as it would alone.

        Returns:
            (B, T, V) logits (meaningless at padding), and (B, T, S) attention weights if asked.

        Raises:
            ValueError: neither or both of ``cache``/``memory``, longer than ``max_len``, or an
                ``attention_mask`` of another shape.
        """
        if (cache is None) == (memory is None):
            raise ValueError("decode needs exactly one of cache= (continue) or memory= (start over)")
        state = self.make_cache(memory) if cache is None else cache
        b, t_new = decoder_input_ids.shape
        if state.length + t_new > self.max_context:
            raise ValueError(f"target of {state.length + t_new} tokens exceeds the model's "
                             f"max_len of {self.max_context}; raise Seq2SeqConfig.max_len")
        valid = None
        if attention_mask is not None:
            if attention_mask.shape != (b, state.length + t_new):
                raise ValueError(f"attention_mask must be (B, cached + T) = {(b, state.length + t_new)}, "
                                 f"got {tuple(attention_mask.shape)}")
            valid = attention_mask[:, state.length:].bool()  # (B, T)
        emb = self.drop(self.tgt_emb(decoder_input_ids))  # (B, T, E)
        enc, mask = state.memory.outputs, state.memory.mask[:, None, :]  # (B, S, H), (B, 1, S)
        logits, weights = [], []
        for t in range(t_new):
            step_in = torch.cat((emb[:, t], state.feed), dim=-1)[:, None]  # (B, 1, E + H)
            out, hidden = self.decoder(step_in, state.hidden)  # (B, 1, H)
            context, w = attend(self.score(out, enc), enc, mask)  # (B, 1, H), (B, 1, S)
            feed = torch.tanh(self.combine(torch.cat((context, out), dim=-1)))  # (B, 1, H)
            if valid is None:
                state.hidden, state.feed = hidden, feed[:, 0]
            else:  # padding leaves the state as it was
                state.hidden = _select_rows(valid[:, t], hidden, state.hidden)
                state.feed = torch.where(valid[:, t, None], feed[:, 0], state.feed)
            logits.append(self.head(self.drop(feed)))
            weights.append(w)
        state.length += t_new
        logits_t = torch.cat(logits, dim=1)  # (B, T, V)
        return (logits_t, torch.cat(weights, dim=1)) if return_weights else logits_t

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits.

        Args:
            input_ids: (B, S) source ids.
            decoder_input_ids: (B, T) target inputs (start token, then the target shifted right).
            attention_mask: (B, S) 1/0, 1 at real source tokens.
            return_weights: also return the (B, T, S) alignment matrix.

        Returns:
            (B, T, V) logits, and (B, T, S) attention weights if asked.
        """
        return self.decode(decoder_input_ids, memory=self.encode(input_ids, attention_mask),
                           return_weights=return_weights)
