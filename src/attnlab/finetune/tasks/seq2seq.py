"""Sequence-to-sequence tasks: ``attnlab finetune translate RECIPE`` and ``attnlab finetune summarize RECIPE``.

Examples are records with an input and an output text::

    # translate
    {"source": "He cringed at the thought.", "target": "Ihn schauderte bei dem Gedanken."}
    # summarize
    {"document": "Michigan billionaire ... was confirmed today ...", "summary": "Betsy DeVos Confirmed ..."}

Two model families, trained and decoded the same way:

- ``init: rnn`` — the recurrent baseline with attention, :class:`attnlab.models.rnn.Seq2SeqRNN`
  (bidirectional encoder, decoder attending with the score function of ``options.rnn.scoring``:
  additive = Bahdanau, general / dot = Luong), sized by ``options.rnn``;
- a transformer encoder–decoder, :class:`attnlab.models.seq2seq.EncoderDecoder`: ``init:
  preset:transformer-base-tiny`` / ``preset:t5-tiny`` (from scratch; ``model.*`` overrides the
  preset) or a pretrained one (``hf:DIR`` of a T5 checkpoint, an attnlab run folder).

Models trained here use one tokenizer for both sides (``tokenizer: bpe:N`` is trained on
sources and targets together). Training is teacher forcing: the target is the output's tokens
followed by the end-of-text token, the decoder input is the start token followed by the target
without its last token; the loss is cross-entropy with ``train.label_smoothing``. Evaluation
generates with :func:`attnlab.generate.generate` (greedy, or beam search with
``options.num_beams``) and scores the text: ``translate`` with corpus BLEU (sacrebleu; headline
``bleu``), ``summarize`` with ROUGE-1/2/L F-measures (rouge-score, no stemming; headline
``rougeL``, the longest common subsequence, which rewards getting the words in order as well as
picking them).

Both tokenize by the targets' language, ``options.lang``: ``auto`` (default) detects it from the
training targets (:func:`attnlab.eval.lang.detect_lang`), or name it (``zh``, ``ja``, ``ko``,
``en``...). Chinese targets are scored with sacrebleu's ``zh`` tokenizer and ROUGE over characters;
other languages as sacrebleu (``13a``) and rouge-score tokenize by default. The choice is
logged once, kept in the task state saved with the model (``"scoring": {"lang",
"bleu_tokenize", "rouge_tokenize"}``) and used for every evaluation of the run.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.config import ModelConfig, from_dict
from attnlab.data.mlm import IGNORE_INDEX
from attnlab.data.tasks import pad_batch, read_records, require_columns
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ConfigError
from attnlab.eval.generation import ROUGE_TYPES, bleu, rouge
from attnlab.eval.lang import AUTO, check_lang, tokenization
from attnlab.finetune.init import Backbone, check_vocab, load_backbone, make_tokenizer
from attnlab.finetune.recipe import Task
from attnlab.generate import generate
from attnlab.models.rnn import Seq2SeqConfig, Seq2SeqRNN

RNN = "rnn"
"""The ``init`` that selects the recurrent baseline."""
EOS_TOKENS = ("<|endoftext|>", "</s>", "[SEP]")
"""End-of-output tokens, in order of preference (ours, T5's, BERT's)."""
PAD_TOKENS = ("[PAD]", "<pad>")


@dataclass
class RNNOptions:
    """Size of the ``init: rnn`` baseline (:class:`~attnlab.models.rnn.Seq2SeqConfig`).

    Attributes:
        cell: ``"gru"`` or ``"lstm"``.
        scoring: attention score: ``"additive"`` (Bahdanau), ``"general"`` / ``"dot"`` (Luong), ``"concat"``.
        d_emb: token embedding width.
        d_hidden: decoder state width (each encoder direction has half).
        n_layers: stacked recurrent layers.
        dropout: dropout on embeddings and outputs.
    """

    cell: Literal["gru", "lstm"] = "gru"
    scoring: Literal["additive", "general", "dot", "concat"] = "additive"
    d_emb: int = 128
    d_hidden: int = 256
    n_layers: int = 1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if min(self.d_emb, self.d_hidden, self.n_layers) <= 0 or self.d_hidden % 2:
            raise ConfigError("options.rnn.d_emb, d_hidden (even) and n_layers must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"options.rnn.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class Seq2SeqOptions:
    """Options shared by ``translate`` and ``summarize`` (the recipe's ``options`` section).

    Attributes:
        source_column: the field holding the input text.
        target_column: the field holding the output text.
        max_source_length: input tokens kept (end-of-text included; longer inputs are cut).
        max_target_length: output tokens trained on and generated at most (end-of-text included).
        num_beams: beam width at evaluation (1: greedy).
        length_penalty: beam search ranks finished outputs by ``log p / length ** length_penalty``.
        lang: the targets' language for BLEU / ROUGE tokenization: ``"auto"`` (detected from the
            training targets) or a code (``zh``, ``ja``, ``ko``, ``en``...).
        rnn: the recurrent model's size (``init: rnn`` only).
    """

    source_column: str = "source"
    target_column: str = "target"
    max_source_length: int = 128
    max_target_length: int = 64
    num_beams: int = 1
    length_penalty: float = 1.0
    lang: str = AUTO
    rnn: RNNOptions = field(default_factory=RNNOptions)

    def __post_init__(self) -> None:
        try:
            check_lang(self.lang)
        except ValueError as e:
            raise ConfigError(f"options.{e}") from None
        if self.max_source_length < 2 or self.max_target_length < 2:
            raise ConfigError("options.max_source_length and options.max_target_length must be >= 2")
        if self.num_beams < 1:
            raise ConfigError(f"options.num_beams must be >= 1 (1: greedy), got {self.num_beams}")


@dataclass
class TranslateOptions(Seq2SeqOptions):
    """:class:`Seq2SeqOptions` for ``translate`` (columns ``source`` → ``target``)."""


@dataclass
class SummarizeOptions(Seq2SeqOptions):
    """:class:`Seq2SeqOptions` for ``summarize`` (columns ``document`` → ``summary``, longer inputs)."""

    source_column: str = "document"
    target_column: str = "summary"
    max_source_length: int = 256
    max_target_length: int = 48


def _first_token(tok: Tokenizer, names: tuple[str, ...], purpose: str) -> int:
    for name in names:
        i = tok.token_id(name)
        if i is not None:
            return int(i)
    raise AttnlabError(f"the tokenizer has none of {', '.join(names)}, needed {purpose}; train one with "
                       "tokenizer=bpe:N (it adds <|endoftext|> and [PAD])")


class Seq2SeqTask(Task):
    """Shared by :class:`TranslateTask` and :class:`SummarizeTask`; subclasses set the metric."""

    Options: ClassVar[type] = Seq2SeqOptions
    scoring_key: ClassVar[str]
    """The tokenization that :meth:`score` uses, a key of ``state["scoring"]``."""

    # -- data ---------------------------------------------------------------
    def read(self, path: str) -> list[dict[str, Any]]:
        o = self.opt
        rows = read_records(path)
        require_columns(rows, [o.source_column, o.target_column], str(path),
                        hint="set options.source_column / options.target_column to the file's columns")
        return [{"source": str(r[o.source_column]), "target": str(r[o.target_column])} for r in rows]

    # -- model --------------------------------------------------------------
    def build(self, train: list[dict[str, Any]]) -> tuple[nn.Module, Tokenizer]:
        cfg, o = self.cfg, self.opt
        texts = [r["source"] for r in train] + [r["target"] for r in train]
        if cfg.init == RNN:
            if cfg.model:
                raise ConfigError("the model section sets a transformer preset; size the init=rnn baseline with "
                                  "options.rnn.* (cell, scoring, d_emb, d_hidden, n_layers, dropout)")
            backbone = Backbone(None, ModelConfig(), None, RNN)
        else:
            backbone = load_backbone(cfg.init, cfg.model)
        tok = make_tokenizer(cfg.tokenizer, backbone, texts)
        self._choose_scoring([r["target"] for r in train])
        eos = _first_token(tok, EOS_TOKENS, "to end every output")
        pads = [i for i in (tok.token_id(t) for t in PAD_TOKENS) if i is not None]
        self.state["special"] = {"eos": eos, "pad": int(pads[0]) if pads else eos}
        if cfg.init == RNN:
            r = o.rnn
            self.state.update(kind=RNN, model=dataclasses.asdict(Seq2SeqConfig(
                src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size, d_emb=r.d_emb, d_hidden=r.d_hidden,
                n_layers=r.n_layers, cell=r.cell, scoring=r.scoring, dropout=r.dropout,
                decoder_start_id=self.state["special"]["pad"], max_len=o.max_target_length + 1)))
            return self.restore(self.state, tok), tok
        model = backbone.model
        if model is None:
            if backbone.config.arch != "encoder_decoder":
                raise ConfigError(f"init '{cfg.init}' is a {backbone.config.arch} model; {self.name} needs an "
                                  "encoder-decoder (init=preset:transformer-base-tiny, preset:t5-tiny) or init=rnn")
            mcfg = dataclasses.replace(backbone.config, vocab_size=backbone.config.vocab_size or tok.vocab_size,
                                       decoder_start_id=self.state["special"]["pad"])
            self.state.update(kind="transformer", model=dataclasses.asdict(mcfg))
            model = self.restore(self.state, tok)
        else:
            if not getattr(model, "is_encoder_decoder", False):
                raise AttnlabError(f"init '{cfg.init}' holds a {type(model).__name__}; {self.name} needs an "
                                   "encoder-decoder (a T5 hf:DIR, an encoder-decoder run, a preset, or init=rnn)")
            self.state.update(kind="transformer", model=dataclasses.asdict(model.config))
        check_vocab(model, tok)
        self._check_lengths(model)
        return model, tok

    def _choose_scoring(self, targets: list[str]) -> None:
        """Fix the run's BLEU / ROUGE tokenization from ``options.lang`` and the training targets; log it."""
        tk = tokenization(targets, self.opt.lang)
        self.state["scoring"] = tk.as_dict()
        how = "detected from the training targets" if self.opt.lang == AUTO else f"options.lang={self.opt.lang}"
        self.log(f"{self.name}: {self.metric} with {self.scoring_key}={self.state['scoring'][self.scoring_key]} "
                 f"(targets: {tk.lang or 'no CJK language'}, {how})")

    def _scoring(self, references: list[str]) -> dict[str, Any]:
        """The run's tokenization (a model saved before ``options.lang`` existed: chosen now from ``references``)."""
        return self.state.get("scoring") or tokenization(references, self.opt.lang).as_dict()

    def _check_lengths(self, model: nn.Module) -> None:
        o = self.opt
        if model.max_context < o.max_target_length + 1:
            raise ConfigError(f"options.max_target_length={o.max_target_length} (+ the start token) exceeds the "
                              f"decoder's context of {model.max_context}; lower it")
        block = getattr(model.config, "block_size", None)
        if block is not None and o.max_source_length > block:
            raise ConfigError(f"options.max_source_length={o.max_source_length} exceeds the encoder's context of "
                              f"{block}; lower it")

    def restore(self, state: dict[str, Any], tokenizer: Tokenizer | None) -> nn.Module:
        if state["kind"] == RNN:
            return Seq2SeqRNN(Seq2SeqConfig(**state["model"]))
        from attnlab.models.seq2seq import EncoderDecoder

        return EncoderDecoder(from_dict(ModelConfig, state["model"], "model"))

    # -- training -----------------------------------------------------------
    def _sources(self, examples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> list[list[int]]:
        if tokenizer is None:
            raise AttnlabError(f"the {self.name} model needs its tokenizer "
                               "(tokenizer.json is missing from the model folder)")
        n, eos = self.opt.max_source_length - 1, self.state["special"]["eos"]
        return [ids[:n] + [eos] for ids in tokenizer.encode_batch([r["source"] for r in examples])]

    def features(
        self, examples: list[dict[str, Any]], tokenizer: Tokenizer | None
    ) -> list[tuple[list[int], list[int]]]:
        n, eos = self.opt.max_target_length - 1, self.state["special"]["eos"]
        targets = [ids[:n] + [eos] for ids in tokenizer.encode_batch([r["target"] for r in examples])]
        return list(zip(self._sources(examples, tokenizer), targets, strict=False))

    def collate(self, features: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        pad = self.state["special"]["pad"]
        start = self.state["model"]["decoder_start_id"]
        src, mask = pad_batch([s for s, _ in features], pad)
        dec, _ = pad_batch([[start, *t[:-1]] for _, t in features], pad)
        labels, lmask = pad_batch([t for _, t in features], pad)
        return {"input_ids": src, "attention_mask": mask, "decoder_input_ids": dec,
                "labels": labels.masked_fill(lmask == 0, IGNORE_INDEX)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # (B, T, V) teacher-forced logits
        logits = model(batch["input_ids"], batch["decoder_input_ids"], attention_mask=batch["attention_mask"])
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                               label_smoothing=self.cfg.train.label_smoothing)

    # -- evaluation ---------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> list[str]:
        """Generated output text per example (greedy or beam search, as ``options`` say)."""
        o, sp = self.opt, self.state["special"]
        sources = self._sources(examples, tokenizer)
        device = next(model.parameters()).device
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        bs = 2 * self.cfg.train.batch_size
        out = [""] * len(sources)
        special = set(tokenizer.special_ids) | {sp["pad"]}
        for b in range(0, len(order), bs):
            idx = order[b:b + bs]
            ids, mask = pad_batch([sources[i] for i in idx], sp["pad"])
            gen = generate(model, ids.to(device), o.max_target_length, temperature=0.0, num_beams=o.num_beams,
                           length_penalty=o.length_penalty, eos_token_id=sp["eos"], attention_mask=mask.to(device))
            for i, row in zip(idx, gen[:, 1:].tolist(), strict=False):
                row = row[: row.index(sp["eos"])] if sp["eos"] in row else row
                out[i] = tokenizer.decode([t for t in row if t not in special]).strip()
        return out

    def evaluate(
        self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Tokenizer | None
    ) -> dict[str, float]:
        return self.score(self.predict(model, examples, tokenizer), [r["target"] for r in examples])

    @abstractmethod
    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """The task's metrics of generated texts against references (includes :attr:`metric`)."""


class TranslateTask(Seq2SeqTask):
    """Translation scored by corpus BLEU; see the module docstring."""

    name = "translate"
    Options = TranslateOptions
    metric = "bleu"
    scoring_key = "bleu_tokenize"

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        tokenize = self._scoring(references)["bleu_tokenize"]
        return {"bleu": bleu(predictions, references, tokenize=tokenize)["bleu"]}


class SummarizeTask(Seq2SeqTask):
    """Summarization scored by ROUGE-1/2/L (headline ROUGE-L); see the module docstring."""

    name = "summarize"
    Options = SummarizeOptions
    metric = "rougeL"
    scoring_key = "rouge_tokenize"

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        res = rouge(predictions, references, tokenize=self._scoring(references)["rouge_tokenize"])
        return {t: res[t] for t in ROUGE_TYPES}
