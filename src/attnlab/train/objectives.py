"""Pretraining objectives: next-token (``clm``), masked LM (``mlm``) and span corruption (``span``).

An :class:`Objective` turns a window of text ids into the model's inputs and labels
(:meth:`Objective.make_batch`, on CPU, all randomness from a given generator), and scores
the model on them (:meth:`Objective.loss`, cross-entropy with label smoothing)::

    objective = build_objective(cfg, data.tokenizer)      # chosen by train.objective / model.arch
    cfg.model.vocab_size = objective.tokenizer.vocab_size  # text tokens + the objective's extras
    batch = objective.make_batch(x, y, seeded_generator(seed, "objective", step, micro))
    loss = objective.loss(model, batch.to(device))

Document masking (``train.document_mask``, ``clm`` only): the batch also carries the (B, T)
document ids of its packed windows (:func:`attnlab.data.packing.document_ids`) as the model's
``document_ids=`` keyword, so a token attends only to its own document, in training and
validation alike.

Extra tokens. Masked LM needs a ``<|mask|>`` token and span corruption needs sentinels; a
BPE trained by ``data.tokenizer: bpe:N`` has only ``<|endoftext|>``. The objective registers
its extra tokens as *special tokens* of a copy of the tokenizer, which appends them after the
text vocabulary: ``<|mask|>`` takes id ``V`` (V = the text tokenizer's size) and the
:data:`N_SENTINELS` sentinels are added as ``<|extra_id_99|>`` … ``<|extra_id_0|>``, so that
``<|extra_id_0|>`` (the first sentinel used) is the highest id ``V + 99``, as in T5. A tokenizer
that already holds these tokens keeps their ids. The training loop saves this extended
tokenizer with every checkpoint, and ``model.vocab_size: 0`` takes its size, so a checkpoint
carries everything needed to decode the model's predictions (``tok.decode`` shows
``<|mask|>`` / ``<|extra_id_0|>``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.config import Config
from attnlab.data.dataset import seeded_generator
from attnlab.data.mlm import IGNORE_INDEX, MASK_TOKEN, mask_tokens
from attnlab.data.packing import document_ids
from attnlab.data.span import span_corrupt, span_counts
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import ConfigError
from attnlab.eval import evaluate_lm

N_SENTINELS = 100
OBJECTIVE_FOR_ARCH = {"decoder": "clm", "encoder": "mlm", "encoder_decoder": "span"}
"""The objective ``train.objective: auto`` picks for each ``model.arch``."""


def sentinel_token(i: int) -> str:
    """Text of the ``i``-th span-corruption sentinel (``<|extra_id_0|>`` is used first)."""
    return f"<|extra_id_{i}|>"


@dataclass
class ObjectiveBatch:
    """What one (micro-)batch feeds the model and what it is scored against.

    Attributes:
        inputs: positional model arguments, e.g. ``(input_ids,)`` or ``(input_ids, decoder_input_ids)``.
        labels: (B, L) target ids aligned with the model's (B, L, V) logits; :data:`IGNORE_INDEX`
            where nothing is predicted.
        kwargs: keyword model arguments with a batch dimension first, e.g.
            ``{"document_ids": (B, T)}`` for document-masked next-token training.
    """

    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ObjectiveBatch:
        """The same batch with ``fn`` applied to every tensor (inputs, labels and kwargs)."""
        return ObjectiveBatch(tuple(fn(t) for t in self.inputs), fn(self.labels),
                              {name: fn(t) for name, t in self.kwargs.items()})

    def to(self, device: torch.device | str) -> ObjectiveBatch:
        """The same batch on ``device``."""
        return self.apply(lambda t: t.to(device, non_blocking=True))

    @property
    def n_targets(self) -> int:
        """Number of predicted positions."""
        return int((self.labels != IGNORE_INDEX).sum())


def token_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
               reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the positions whose label is not :data:`IGNORE_INDEX`.

    With label smoothing ε the target is ``(1 − ε)·onehot + ε/V`` (V = logits' last dim).

    Args:
        logits: (B, L, V) scores (computed in float32 whatever their dtype).
        labels: (B, L) target ids.
        label_smoothing: ε in [0, 1).
        reduction: ``"mean"`` over targets (0 when there are none) or ``"sum"``.

    Returns:
        Scalar loss.
    """
    total = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing, reduction="sum")
    if reduction == "sum":
        return total
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


class Objective:
    """A pretraining objective. Subclasses define :meth:`make_batch` and their extra tokens.

    Args:
        tokenizer: the text tokenizer; :attr:`tokenizer` is a copy extended with :meth:`extra_tokens`.
        label_smoothing: ε of the training loss (validation reports the plain NLL).
    """

    name: ClassVar[str]
    arch: ClassVar[str]

    def __init__(self, tokenizer: Tokenizer, label_smoothing: float = 0.0) -> None:
        extras = self.extra_tokens()
        self.tokenizer = tokenizer.with_special_tokens(extras) if extras else tokenizer
        self.label_smoothing = label_smoothing

    def extra_tokens(self) -> list[str]:
        """Special tokens this objective adds to the tokenizer, in the order they get ids."""
        return []

    def make_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> ObjectiveBatch:
        """Build the model inputs and labels of a window of text.

        Args:
            x: (B, T) token ids of the window (CPU).
            y: (B, T) the window shifted left by one (next tokens); used by ``clm`` only.
            generator: the only source of randomness (masking, spans).
        """
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: ObjectiveBatch) -> torch.Tensor:
        """Training loss: label-smoothed cross-entropy of ``model(*batch.inputs, **batch.kwargs)``
        against the labels."""
        return token_loss(model(*batch.inputs, **batch.kwargs), batch.labels, self.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, *, split: str = "val", batch_size: int = 8,
                 seq_len: int = 256, max_batches: int = 50, device: torch.device | str = "cpu",
                 autocast: contextlib.AbstractContextManager | None = None, seed: int = 0) -> dict[str, float]:
        """Mean negative log-likelihood per predicted token over fixed windows of a split.

        The windows are :meth:`~attnlab.data.TokenData.eval_batches`'s, and the masks / spans of
        batch ``i`` come from a generator seeded by ``(seed, i)``, so repeated evaluations are comparable.

        Returns:
            ``loss`` (nats per predicted token, no label smoothing) and ``tokens`` (predicted tokens).
        """
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for i, (x, y) in enumerate(data.eval_batches(split, batch_size, seq_len, max_batches)):
            batch = self.make_batch(x, y, seeded_generator(seed, f"{split}-{self.name}", i)).to(device)
            with autocast or contextlib.nullcontext():
                logits = model(*batch.inputs, **batch.kwargs)
            total += token_loss(logits, batch.labels, reduction="sum").item()
            count += batch.n_targets
        model.train(was_training)
        if count == 0:
            raise ValueError(f"no {split} tokens to evaluate")
        return {"loss": total / count, "tokens": float(count)}


class _WithDocumentIds(nn.Module):
    """``model(ids)`` called as ``model(ids, document_ids=...)`` of its packed windows (for :func:`evaluate_lm`)."""

    def __init__(self, model: nn.Module, eos_id: int) -> None:
        super().__init__()
        self.model, self.eos_id = model, eos_id
        self.train(model.training)  # evaluate_lm restores the mode it finds

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, document_ids=document_ids(input_ids, self.eos_id))  # (B, T, V)


class CausalLM(Objective):
    """Next-token prediction (GPT): every position predicts the token after it.

    Args:
        tokenizer: the text tokenizer.
        label_smoothing: ε of the training loss.
        document_mask: keep attention inside each document of a packed window (documents end
            at the tokenizer's ``eos_id``; see :func:`attnlab.data.packing.document_ids`), in
            training and validation alike.

    Raises:
        ConfigError: ``document_mask`` with a tokenizer that has no end-of-text token.
    """

    name, arch = "clm", "decoder"

    def __init__(self, tokenizer: Tokenizer, label_smoothing: float = 0.0, document_mask: bool = False) -> None:
        super().__init__(tokenizer, label_smoothing)
        if document_mask and tokenizer.eos_id is None:
            raise ConfigError("train.document_mask needs a tokenizer with an end-of-text token to find document "
                              "boundaries; use a tokenizer with <|endoftext|> or set train.document_mask=false")
        self.document_eos: int | None = tokenizer.eos_id if document_mask else None  # None: no document mask

    def make_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> ObjectiveBatch:
        if self.document_eos is None:
            return ObjectiveBatch((x,), y)
        return ObjectiveBatch((x,), y, {"document_ids": document_ids(x, self.document_eos)})  # (B, T)

    def evaluate(self, model: nn.Module, data: Any, **kw: Any) -> dict[str, float]:
        """Also ``ppl`` and ``bpb`` (bits per UTF-8 byte), meaningful for next-token loss only."""
        kw.pop("seed", None)
        if self.document_eos is not None:
            model = _WithDocumentIds(model, self.document_eos)
        return evaluate_lm(model, data, **kw)


class MaskedLM(Objective):
    """BERT's masked LM: a share of tokens is selected, 80/10/10 masked/random/kept, and predicted.

    Args:
        tokenizer: the text tokenizer.
        label_smoothing: ε of the training loss.
        mlm_probability: share of tokens selected (special tokens such as ``<|endoftext|>`` never are).
    """

    name, arch = "mlm", "encoder"

    def __init__(self, tokenizer: Tokenizer, label_smoothing: float = 0.0, mlm_probability: float = 0.15) -> None:
        super().__init__(tokenizer, label_smoothing)
        self.mask_id = int(self.tokenizer.token_id(MASK_TOKEN))
        self.special_ids = self.tokenizer.special_ids  # never selected nor drawn as random replacements
        self.mlm_probability = mlm_probability

    def extra_tokens(self) -> list[str]:
        return [MASK_TOKEN]

    def make_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> ObjectiveBatch:
        inputs, labels = mask_tokens(x, mask_token_id=self.mask_id, vocab_size=self.tokenizer.vocab_size,
                                     special_ids=self.special_ids, mlm_probability=self.mlm_probability,
                                     generator=generator)
        return ObjectiveBatch((inputs,), labels)


class SpanCorruption(Objective):
    """T5's span corruption (:func:`attnlab.data.span.span_corrupt`) with teacher forcing.

    The encoder reads the corrupted text; the decoder reads ``[start] + targets[:-1]`` and
    predicts ``targets``.

    Args:
        tokenizer: the text tokenizer.
        label_smoothing: ε of the training loss.
        noise_density: share of tokens hidden.
        mean_span_length: mean hidden-span length.
        decoder_start_id: the decoder's first input (``model.decoder_start_id``).
    """

    name, arch = "span", "encoder_decoder"

    def __init__(self, tokenizer: Tokenizer, label_smoothing: float = 0.0, noise_density: float = 0.15,
                 mean_span_length: float = 3.0, decoder_start_id: int = 0) -> None:
        super().__init__(tokenizer, label_smoothing)
        self.sentinel_ids = [int(self.tokenizer.token_id(sentinel_token(i))) for i in range(N_SENTINELS)]
        self.eos_id = tokenizer.eos_id
        self.noise_density = noise_density
        self.mean_span_length = mean_span_length
        self.decoder_start_id = decoder_start_id

    def extra_tokens(self) -> list[str]:
        return [sentinel_token(i) for i in reversed(range(N_SENTINELS))]  # <|extra_id_0|> gets the top id

    def make_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> ObjectiveBatch:
        inputs, targets = span_corrupt(x, noise_density=self.noise_density, mean_span_length=self.mean_span_length,
                                       sentinel_ids=self.sentinel_ids, eos_id=self.eos_id, generator=generator)
        start = torch.full((targets.size(0), 1), self.decoder_start_id, dtype=torch.long)  # (B, 1)
        decoder_inputs = torch.cat([start, targets[:, :-1]], dim=1)  # (B, L): shifted right
        return ObjectiveBatch((inputs, decoder_inputs), targets)


OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (CausalLM, MaskedLM, SpanCorruption)}


def objective_name(cfg: Config) -> str:
    """The objective a config trains with (``auto`` resolved by ``model.arch``).

    Raises:
        ConfigError: the objective does not fit the architecture, or ``train.document_mask`` does
            not fit the objective or the model.
    """
    arch, name = cfg.model.arch, cfg.train.objective
    if name == "auto":
        name = OBJECTIVE_FOR_ARCH[arch]
    elif OBJECTIVES[name].arch != arch:
        raise ConfigError(
            f"train.objective={name} needs model.arch={OBJECTIVES[name].arch}, but model.arch={arch}; "
            f"use train.objective={OBJECTIVE_FOR_ARCH[arch]} (or auto)"
        )
    if cfg.train.document_mask and name != "clm":
        raise ConfigError(f"train.document_mask applies to next-token training of decoders (train.objective=clm), "
                          f"not model.arch={arch} with objective {name}; set train.document_mask=false")
    if cfg.train.document_mask and cfg.model.mixer == "linear":
        raise ConfigError("train.document_mask needs softmax attention (model.mixer=linear supports only a causal "
                          "mask); set model.mixer=softmax or train.document_mask=false")
    return name


def build_objective(cfg: Config, tokenizer: Tokenizer) -> Objective:
    """The objective ``cfg`` asks for, with its extra tokens registered on a copy of ``tokenizer``.

    Args:
        cfg: the run config (``train.objective``, ``train.label_smoothing``, ``train.mlm_probability``,
            ``train.span_*``, ``train.document_mask``, ``model.arch``, ``model.decoder_start_id``).
        tokenizer: the text tokenizer (left unchanged).

    Raises:
        ConfigError: an objective that does not fit ``model.arch``, or span settings that need
            more than :data:`N_SENTINELS` sentinels at ``train.seq_len``.
    """
    tc, name = cfg.train, objective_name(cfg)
    if name == "mlm":
        return MaskedLM(tokenizer, tc.label_smoothing, tc.mlm_probability)
    if name == "span":
        seq_len = tc.seq_len or cfg.model.block_size
        _, n_spans = span_counts(max(seq_len, 2), tc.span_noise_density, tc.span_mean_length)
        if n_spans + 1 > N_SENTINELS:
            raise ConfigError(
                f"span corruption of {seq_len}-token windows makes {n_spans} spans, more than the "
                f"{N_SENTINELS - 1} sentinels allow; raise train.span_mean_length or lower train.seq_len"
            )
        return SpanCorruption(tokenizer, tc.label_smoothing, tc.span_noise_density, tc.span_mean_length,
                              cfg.model.decoder_start_id)
    return CausalLM(tokenizer, tc.label_smoothing, tc.document_mask)


__all__ = [
    "MASK_TOKEN", "N_SENTINELS", "OBJECTIVES", "OBJECTIVE_FOR_ARCH", "CausalLM", "MaskedLM", "Objective",
    "ObjectiveBatch", "SpanCorruption", "build_objective", "objective_name", "sentinel_token", "token_loss",
]
