"""Sequence classification (sentiment, topic, NLI pairs): ``attnlab finetune classify RECIPE``.

Examples are records with a text (and optionally a second text) and a label::

    {"text": "A gripping, beautifully acted film.", "label": "positive"}

The model is an encoder with a classification head — a Hugging Face BERT-layout
directory (``init: hf:DIR``, e.g. all-MiniLM-L6-v2 with its WordPiece tokenizer), an
attnlab encoder run folder, or a preset trained from scratch (``init: preset:bert-tiny``
with ``tokenizer: bpe:N``) — or, with ``init: bow``, the bag-of-words logistic
regression of :mod:`attnlab.finetune.baselines`. Inputs are ``[CLS] text [SEP]``
(``[CLS] a [SEP] b [SEP]`` with token types 0/1 for pairs; an encoder pretrained by
``attnlab train``, whose vocabulary has no [CLS]/[SEP], uses ``<|endoftext|>`` there), truncated
to ``options.max_length`` tokens. The headline metric is accuracy; macro F1 is reported too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.config import ModelConfig, from_dict
from attnlab.data.tasks import pad_batch, read_records, require_columns
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ConfigError
from attnlab.eval.classification import accuracy, precision_recall_f1
from attnlab.finetune.baselines import BagOfWordsClassifier, NgramVocab, collate_bags
from attnlab.finetune.init import build_encoder, encoder_special_ids, load_backbone, make_tokenizer
from attnlab.finetune.recipe import Task
from attnlab.models import EncoderModel, SequenceClassifier

BOW = "bow"
"""The ``init`` that selects the bag-of-words baseline."""


@dataclass
class ClassifyOptions:
    """Options of the ``classify`` task (the recipe's ``options`` section).

    Attributes:
        text_column: the field holding the text.
        text_pair_column: a second text field for pair tasks (``""``: single texts).
        label_column: the field holding the label (compared as a string: ``1`` and ``"1"`` agree).
        labels: the label names in class-id order (empty: every label of the training
            data, sorted). A label outside this list is an error.
        max_length: tokens per input, [CLS] and [SEP] included (longer texts are truncated).
        pooling: ``"cls"`` (the first token, as BERT) or ``"mean"`` (mean of the real
            tokens, as sentence-transformers models such as all-MiniLM-L6-v2 were trained).
        bow_ngrams: largest n-gram order of the ``init: bow`` baseline.
        bow_min_count: the baseline keeps n-grams seen in at least this many training texts.
    """

    text_column: str = "text"
    text_pair_column: str = ""
    label_column: str = "label"
    labels: list[str | int] = field(default_factory=list)
    max_length: int = 128
    pooling: Literal["cls", "mean"] = "cls"
    bow_ngrams: int = 2
    bow_min_count: int = 2

    def __post_init__(self) -> None:
        self.labels = [str(label) for label in self.labels]
        if self.max_length < 3:
            raise ConfigError(f"options.max_length must be >= 3 ([CLS] text [SEP]), got {self.max_length}")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"options.labels has duplicates: {self.labels}; list each label once")
        if self.labels and len(self.labels) < 2:
            raise ConfigError(f"options.labels needs at least two labels, got {self.labels}")
        if self.bow_ngrams < 1 or self.bow_min_count < 1:
            raise ConfigError("options.bow_ngrams and options.bow_min_count must be >= 1")


def encode_texts(
    tok: Tokenizer, texts: list[str], pairs: list[str] | None, max_length: int, ids: dict[str, int], types: bool
) -> list[dict[str, list[int]]]:
    """``[CLS] a [SEP] (b [SEP])`` ids (and token types) per text, longest-first truncation to ``max_length``."""
    a_ids = tok.encode_batch(texts)
    b_ids = tok.encode_batch(pairs) if pairs is not None else [None] * len(texts)
    out = []
    for a, b in zip(a_ids, b_ids, strict=False):
        budget = max_length - (3 if b is not None else 2)
        a, b = list(a), (list(b) if b is not None else None)
        while len(a) + len(b or ()) > budget:
            (a if b is None or len(a) >= len(b) else b).pop()
        seq = [ids["cls"], *a, ids["sep"]]
        tt = [0] * len(seq)
        if b is not None:
            seq += [*b, ids["sep"]]
            tt += [1] * (len(b) + 1)
        out.append({"input_ids": seq, "token_type_ids": tt} if types else {"input_ids": seq})
    return out


class ClassifyTask(Task):
    """Text (or text-pair) classification; see the module docstring."""

    name = "classify"
    Options = ClassifyOptions
    metric = "accuracy"
    head_modules = ("pooler", "classifier")

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self._vocab_cache: NgramVocab | None = None

    # -- data ---------------------------------------------------------------
    def _text_columns(self) -> list[str]:
        o = self.opt
        return [o.text_column] + ([o.text_pair_column] if o.text_pair_column else [])

    def read(self, path: str) -> list[dict[str, Any]]:
        rows = read_records(path)
        require_columns(rows, [*self._text_columns(), self.opt.label_column], str(path),
                        hint="set options.text_column / options.label_column to the file's columns")
        return rows

    def _labels(self, train: list[dict[str, Any]]) -> list[str]:
        if "labels" in self.state:
            return self.state["labels"]
        labels = list(self.opt.labels) or sorted({str(r[self.opt.label_column]) for r in train})
        if len(labels) < 2:
            raise AttnlabError(f"the training data has only the label '{labels[0]}'; a classifier needs two or more")
        self.state["labels"] = labels
        return labels

    def label_ids(self, rows: list[dict[str, Any]], source: str) -> list[int]:
        """Class ids of ``rows``' labels.

        Raises:
            AttnlabError: a record without a label, or a label outside the label set.
        """
        index = {lab: i for i, lab in enumerate(self.state["labels"])}
        col = self.opt.label_column
        require_columns(rows, [col], source, hint="set options.label_column")
        out = []
        for i, r in enumerate(rows):
            lab = str(r[col])
            if lab not in index:
                raise AttnlabError(f"{source} record {i}: label '{lab}' is not one of the labels "
                                   f"({', '.join(index)}); fix the data or set options.labels")
            out.append(index[lab])
        return out

    def splits(self) -> dict[str, list[dict[str, Any]]]:
        s = super().splits()
        self._labels(s["train"])
        d = self.cfg.data
        for split, path in (("train", d.train), ("val", d.val or d.train), ("test", d.test or d.val or d.train)):
            self.label_ids(s[split], f"'{path}'")  # an unknown label fails before any training
        return s

    # -- model --------------------------------------------------------------
    def build(self, train: list[dict[str, Any]]) -> tuple[nn.Module, Tokenizer | None]:
        labels = self._labels(train)
        texts = [str(r[c]) for r in train for c in self._text_columns()]
        if self.cfg.init == BOW:
            if self.cfg.lora is not None:
                raise ConfigError("lora does not apply to init=bow (a linear model); remove the lora section")
            if self.cfg.tokenizer or self.cfg.model:
                raise ConfigError("init=bow builds its own n-gram features; drop the tokenizer and model settings "
                                  "(tune options.bow_ngrams / options.bow_min_count instead)")
            vocab = NgramVocab.fit(texts, self.opt.bow_ngrams, self.opt.bow_min_count)
            self.state.update(kind=BOW, vocab=vocab.to_state())
            return self.restore(self.state, None), None
        backbone = load_backbone(self.cfg.init, self.cfg.model)
        tok = make_tokenizer(self.cfg.tokenizer, backbone, texts)
        encoder = build_encoder(backbone, tok, self.name, self.opt.max_length)
        self.state.update(kind="encoder", model=dataclasses.asdict(encoder.config), pooling=self.opt.pooling,
                          special=encoder_special_ids(tok, "to build [CLS] text [SEP] inputs"))
        return _classifier(encoder, len(labels), self.opt.pooling), tok

    def restore(self, state: dict[str, Any], tokenizer: Tokenizer | None) -> nn.Module:
        n = len(state["labels"])
        if state["kind"] == BOW:
            return BagOfWordsClassifier(len(state["vocab"]["grams"]), n)
        encoder = EncoderModel(from_dict(ModelConfig, state["model"], "model"))
        return _classifier(encoder, n, state["pooling"])

    # -- training -----------------------------------------------------------
    def _inputs(self, examples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> list[Any]:
        o = self.opt
        require_columns(examples, self._text_columns(), "the examples", hint="set options.text_column")
        texts = [str(r[o.text_column]) for r in examples]
        pairs = [str(r[o.text_pair_column]) for r in examples] if o.text_pair_column else None
        if self.state["kind"] == BOW:
            vocab = self._vocab()
            return [vocab.encode(t if pairs is None else f"{t} {p}")
                    for t, p in zip(texts, pairs or texts, strict=False)]
        if tokenizer is None:
            raise AttnlabError("this classifier needs its tokenizer (tokenizer.json is missing from the model folder)")
        types = bool(self.state["model"].get("type_vocab_size"))
        return encode_texts(tokenizer, texts, pairs, o.max_length, self.state["special"], types)

    def _vocab(self) -> NgramVocab:
        if self._vocab_cache is None:
            self._vocab_cache = NgramVocab.from_state(self.state["vocab"])
        return self._vocab_cache

    def _collate_inputs(self, inputs: list[Any]) -> dict[str, torch.Tensor]:
        if self.state["kind"] == BOW:
            return collate_bags(inputs)
        pad = self.state["special"]["pad"]
        ids, mask = pad_batch([x["input_ids"] for x in inputs], pad)
        batch = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs[0]:
            batch["token_type_ids"] = pad_batch([x["token_type_ids"] for x in inputs], 0)[0]
        return batch

    def features(self, examples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> list[Any]:
        labels = self.label_ids(examples, "the training data")
        return [(x, y) for x, y in zip(self._inputs(examples, tokenizer), labels, strict=False)]

    def length(self, feature: Any) -> int | None:
        x, _ = feature
        return len(x["input_ids"]) if isinstance(x, dict) else None  # bags need no padding

    def collate(self, features: list[Any]) -> dict[str, torch.Tensor]:
        batch = self._collate_inputs([x for x, _ in features])
        batch["labels"] = torch.tensor([y for _, y in features], dtype=torch.long)
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs)  # (B, C)
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.cfg.train.label_smoothing)

    # -- evaluation ---------------------------------------------------------
    @torch.no_grad()
    def predict_ids(self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> list[int]:
        """Predicted class ids (batches of similar length, so little padding is computed)."""
        inputs = self._inputs(examples, tokenizer)
        device = next(model.parameters()).device
        size = lambda x: len(x[0]) if isinstance(x, tuple) else len(x["input_ids"])  # noqa: E731
        order = sorted(range(len(inputs)), key=lambda i: size(inputs[i]))
        preds = [0] * len(inputs)
        bs = 2 * self.cfg.train.batch_size
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            batch = {k: v.to(device) for k, v in self._collate_inputs([inputs[i] for i in idx]).items()}
            for i, p in zip(idx, model(**batch).argmax(-1).tolist(), strict=False):
                preds[i] = p
        return preds

    def evaluate(
        self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Tokenizer | None
    ) -> dict[str, float]:
        gold = self.label_ids(examples, "the evaluation data")
        pred = self.predict_ids(model, examples, tokenizer)
        classes = range(len(self.state["labels"]))
        return {"accuracy": accuracy(pred, gold),
                "f1": precision_recall_f1(pred, gold, "macro", classes=classes)["f1"]}

    def predict(self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> list[str]:
        labels = self.state["labels"]
        return [labels[i] for i in self.predict_ids(model, examples, tokenizer)]


def _classifier(encoder: EncoderModel, n_classes: int, pooling: str) -> SequenceClassifier:
    return SequenceClassifier(encoder, n_classes, pooling=pooling)
