"""Causal-LM domain adaptation: ``attnlab finetune lm RECIPE`` continues next-token training on new text.

``init`` is a decoder trained by ``attnlab train`` (its run or checkpoint folder; or
``preset:NAME`` to start from scratch with ``tokenizer: bpe:N``). The data are plain text
(a ``.txt`` file, a folder of them or ``builtin:shakespeare``: one document per file) or
records with a text field (``.jsonl`` / ``.csv`` / ... and ``options.text_column``)::

    attnlab train gpt-tiny                                   # a Shakespeare GPT in runs/gpt-tiny
    attnlab data prepare rotten-tomatoes --out data/sentiment
    attnlab finetune lm lm-adapt                             # adapt it to movie reviews

Documents are tokenized, joined by ``<|endoftext|>`` (when the vocabulary has it) and
cut into windows of ``options.seq_len + 1`` tokens; each token is predicted once. Without a
validation file the end of every training document is held out (``data.val_fraction``),
as ``attnlab train`` does. The validation loss is measured before the first step
(``val_start`` in ``results.json``: the pretrained model on the new domain) and during
training; the best model is the one with the lowest loss.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.config import ModelConfig, from_dict
from attnlab.data.corpus import read_documents
from attnlab.data.dataset import split_documents
from attnlab.data.mlm import IGNORE_INDEX
from attnlab.data.tasks import FORMATS, pad_batch, read_records, require_columns
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ConfigError
from attnlab.finetune.init import check_vocab, load_backbone, make_tokenizer
from attnlab.finetune.recipe import Task
from attnlab.models import DecoderLM


@dataclass
class LMOptions:
    """Options of the ``lm`` task (the recipe's ``options`` section).

    Attributes:
        text_column: the text field of record files (``.jsonl``, ``.csv``, ...); plain text
            files are read whole.
        seq_len: tokens per training window (``0``: the model's ``block_size``).
    """

    text_column: str = "text"
    seq_len: int = 0

    def __post_init__(self) -> None:
        if self.seq_len < 0:
            raise ConfigError(f"options.seq_len must be >= 0 (0: the model's block size), got {self.seq_len}")


def _is_records(path: str) -> bool:
    return any(s in FORMATS for s in Path(path).suffixes)


class LMTask(Task):
    """Next-token fine-tuning of a decoder on new text; see the module docstring."""

    name = "lm"
    Options = LMOptions
    metric = "loss"
    higher_is_better = False
    eval_at_start = True

    # -- data ---------------------------------------------------------------
    def read(self, path: str) -> list[dict[str, Any]]:
        col = self.opt.text_column
        if _is_records(path):
            rows = read_records(path)
            require_columns(rows, [col], str(path), hint="set options.text_column")
            return rows
        return [{"name": name, col: text} for name, text in read_documents(path, text_field=col)]

    def holdout(self, train: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        col = self.opt.text_column
        docs = [(str(i), str(r[col])) for i, r in enumerate(train)]
        head, tail = split_documents(docs, self.cfg.data.val_fraction)
        if not tail:
            raise AttnlabError(f"'{self.cfg.data.train}' is too short to hold out validation text; give data.val")
        return [{col: t} for _, t in head], [{col: t} for _, t in tail]

    # -- model --------------------------------------------------------------
    def build(self, train: list[dict[str, Any]]) -> tuple[nn.Module, Tokenizer]:
        backbone = load_backbone(self.cfg.init, self.cfg.model)
        tok = make_tokenizer(self.cfg.tokenizer, backbone, [str(r[self.opt.text_column]) for r in train])
        if backbone.model is None:
            cfg = backbone.config
            if cfg.arch != "decoder":
                raise ConfigError(f"init '{backbone.source}' is a {cfg.arch} model; lm needs a decoder "
                                  "(arch: decoder), e.g. a run folder of `attnlab train gpt-tiny`")
            if cfg.vocab_size == 0:
                cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
            model = DecoderLM(cfg)
        else:
            model = backbone.model
            if not isinstance(model, DecoderLM):
                raise AttnlabError(f"init '{backbone.source}' holds a {type(model).__name__}; lm fine-tunes a "
                                   "decoder language model (a run folder of `attnlab train`)")
        check_vocab(model, tok)
        if self.opt.seq_len > model.max_context:
            raise ConfigError(f"options.seq_len={self.opt.seq_len} exceeds the model's context of "
                              f"{model.max_context} tokens; lower options.seq_len")
        self.state = {"model": dataclasses.asdict(model.config)}
        return model, tok

    def restore(self, state: dict[str, Any], tokenizer: Tokenizer | None) -> nn.Module:
        return DecoderLM(from_dict(ModelConfig, state["model"], "model"))

    # -- training -----------------------------------------------------------
    def _seq_len(self) -> int:
        return self.opt.seq_len or int(self.state["model"]["block_size"])

    def features(self, examples: list[dict[str, Any]], tokenizer: Tokenizer) -> list[list[int]]:
        """Windows of ``seq_len + 1`` ids over the documents joined by ``<|endoftext|>`` (the last may be shorter)."""
        col = self.opt.text_column
        require_columns(examples, [col], "the examples", hint="set options.text_column")
        eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
        stream: list[int] = []
        for r in examples:
            for ids in tokenizer.encode_batch(tokenizer.chunk_text(str(r[col]))):
                stream.extend(ids)
            stream.extend(eos)
        n = self._seq_len()
        windows = [stream[i:i + n + 1] for i in range(0, max(len(stream) - 1, 0), n)]
        return [w for w in windows if len(w) >= 2]

    def collate(self, features: list[list[int]]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch(features, 0)  # (B, T+1)
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)  # (B, T)
        return {"input_ids": ids[:, :-1], "targets": targets}

    def _token_losses(self, model: nn.Module, batch: dict[str, torch.Tensor], reduction: str) -> torch.Tensor:
        logits = model(batch["input_ids"])  # (B, T, V)
        smoothing = self.cfg.train.label_smoothing if model.training else 0.0
        return F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX,
                               reduction=reduction, label_smoothing=smoothing)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._token_losses(model, batch, "mean")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Tokenizer) -> dict[str, float]:
        """Mean next-token loss (nats) over every window of ``examples``, and its perplexity."""
        feats = self.features(examples, tokenizer)
        if not feats:
            raise AttnlabError("no text to evaluate (every example is empty)")
        device = next(model.parameters()).device
        total, count = 0.0, 0
        bs = self.cfg.train.batch_size
        for start in range(0, len(feats), bs):
            batch = {k: v.to(device) for k, v in self.collate(feats[start:start + bs]).items()}
            total += self._token_losses(model, batch, "sum").item()
            count += int((batch["targets"] != IGNORE_INDEX).sum())
        loss = total / count
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": float(count)}
