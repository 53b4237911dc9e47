"""Extractive question answering (SQuAD v1.1 style): ``attnlab finetune qa RECIPE``.

Examples are SQuAD JSON files (read by :func:`attnlab.data.tasks.read_squad`) or records
with a question, a context and answers whose ``answer_start`` is a character offset::

    {"question": "Who says \\"I take it much unkindly\\"?", "context": "Roderigo: Tush, ...",
     "answers": {"text": ["Roderigo"], "answer_start": [0]}}

(``answers`` may also be a list of ``{"text", "answer_start"}`` objects.)

The model is an encoder (a BERT-layout ``hf:DIR`` such as all-MiniLM-L6-v2, an attnlab
encoder run, or ``preset:bert-tiny`` with ``tokenizer: bpe:N``) with a span head
(:class:`attnlab.models.heads.EncoderForQuestionAnswering`). The input is
``[CLS] question [SEP] context [SEP]`` (token types 0 / 1 when the encoder has them). A
context longer than fits is cut into windows of ``max_length`` tokens overlapping by
``doc_stride`` tokens; a window that does not hold the whole answer is trained to point
at [CLS]. Token offsets from the tokenizer map a predicted token span back to the exact
characters of the context. The prediction of a question is the best-scoring span
(``start + end`` logit, at most ``max_answer_length`` tokens) over all its windows.
Metrics: exact match and F1 of the official SQuAD v1.1 evaluation (:mod:`attnlab.eval.squad`),
in percent; the headline is F1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnlab.config import ModelConfig, from_dict
from attnlab.data.tasks import pad_batch, read_records, require_columns
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ConfigError
from attnlab.eval.squad import squad_scores
from attnlab.finetune.init import build_encoder, load_backbone, make_tokenizer, token_id
from attnlab.finetune.recipe import Task
from attnlab.models import EncoderModel
from attnlab.models.heads import EncoderForQuestionAnswering, best_spans, span_loss


@dataclass
class QAOptions:
    """Options of the ``qa`` task (the recipe's ``options`` section).

    Attributes:
        question_column: the field holding the question (records files; SQuAD JSON has ``question``).
        context_column: the field holding the context.
        answers_column: the field holding the answers (``{"text": [...], "answer_start": [...]}``).
        max_length: tokens per window, [CLS] and both [SEP] included.
        doc_stride: tokens shared by consecutive windows of a long context (the overlap).
        max_question_length: a longer question is cut to this many tokens.
        max_answer_length: the longest answer predicted, in tokens.
    """

    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"
    max_length: int = 256
    doc_stride: int = 64
    max_question_length: int = 64
    max_answer_length: int = 30

    def __post_init__(self) -> None:
        room = self.max_length - self.max_question_length - 3
        if room < 8:
            raise ConfigError(f"options.max_length={self.max_length} leaves {room} context tokens after a question of "
                              f"{self.max_question_length}; raise max_length or lower max_question_length")
        if not 0 <= self.doc_stride < room:
            raise ConfigError(f"options.doc_stride={self.doc_stride} must be in [0, {room}) (the overlap of windows "
                              f"of {room} context tokens); lower it")
        if self.max_question_length < 1 or self.max_answer_length < 1:
            raise ConfigError("options.max_question_length and options.max_answer_length must be >= 1")


@dataclass
class QAFeature:
    """One window of one example, ready for the model.

    Attributes:
        example: index of the example it comes from.
        input_ids: ``[CLS] question [SEP] context window [SEP]``.
        token_type_ids: 0 for the question part, 1 for the context part (``None``: the encoder has none).
        context_start: position of the first context token.
        offsets: character span in the context of each context token of the window.
        start: target start position (0: [CLS], the answer is not in this window).
        end: target end position.
    """

    example: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    context_start: int
    offsets: list[tuple[int, int]]
    start: int = 0
    end: int = 0


def _answers(record: dict[str, Any], col: str, where: str) -> dict[str, list]:
    """``{"text": [...], "answer_start": [...]}`` from either answer layout (dict of lists, or list of dicts)."""
    raw = record[col]
    if isinstance(raw, list) and all(isinstance(a, dict) for a in raw):
        raw = {"text": [a.get("text") for a in raw], "answer_start": [a.get("answer_start") for a in raw]}
    try:
        texts, starts = raw["text"], raw["answer_start"]
        if not (isinstance(texts, list) and isinstance(starts, list) and len(texts) == len(starts)):
            raise TypeError
        return {"text": [str(t) for t in texts], "answer_start": [int(s) for s in starts]}
    except (TypeError, KeyError, ValueError):
        raise AttnlabError(f"{where}: '{col}' must be {{\"text\": [...], \"answer_start\": [...]}} (lists of equal "
                           "length, integer character offsets) or a list of {\"text\", \"answer_start\"} "
                           "objects") from None


def window_starts(n_tokens: int, window: int, overlap: int) -> list[int]:
    """Start positions of windows of ``window`` tokens over ``n_tokens``, consecutive ones sharing ``overlap``.

    The last window ends at or after the last token; a short text gets one window at 0.
    """
    starts, step = [0], window - overlap
    while starts[-1] + window < n_tokens:
        starts.append(starts[-1] + step)
    return starts


def char_to_token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last token covering characters ``[start, end)``, or ``None`` when no token does."""
    first = next((i for i, (s, e) in enumerate(offsets) if e > start and s < end), None)
    if first is None:
        return None
    last = max(i for i, (s, e) in enumerate(offsets) if s < end and e > start)
    return first, last


class QATask(Task):
    """Extractive QA with a span head; see the module docstring."""

    name = "qa"
    Options = QAOptions
    metric = "f1"
    head_modules = ("qa_head",)

    # -- data ---------------------------------------------------------------
    def read(self, path: str) -> list[dict[str, Any]]:
        o = self.opt
        rows = read_records(path)
        require_columns(rows, [o.question_column, o.context_column, o.answers_column], str(path),
                        hint="set options.question_column / context_column / answers_column")
        out = []
        for i, r in enumerate(rows):
            where = f"'{path}' record {i}"
            context, answers = str(r[o.context_column]), _answers(r, o.answers_column, where)
            for text, start in zip(answers["text"], answers["answer_start"], strict=False):
                if context[start:start + len(text)] != text:
                    raise AttnlabError(f"{where}: answer {text!r} is not at answer_start={start} of its context; "
                                       "fix answer_start (a character offset into the context)")
            if not answers["text"]:
                raise AttnlabError(f"{where} has no answer; this task is extractive QA with an answer per question "
                                   "(SQuAD v1.1)")
            out.append({"id": str(r.get("id", i)), "question": str(r[o.question_column]), "context": context,
                        "answers": answers})
        return out

    # -- model --------------------------------------------------------------
    def build(self, train: list[dict[str, Any]]) -> tuple[nn.Module, Tokenizer]:
        backbone = load_backbone(self.cfg.init, self.cfg.model)
        contexts = list(dict.fromkeys(r["context"] for r in train))
        tok = make_tokenizer(self.cfg.tokenizer, backbone, contexts + [r["question"] for r in train])
        encoder = build_encoder(backbone, tok, self.name, self.opt.max_length)
        self.state.update(model=dataclasses.asdict(encoder.config),
                          special={k: token_id(tok, t, "to build [CLS] question [SEP] context [SEP] inputs")
                                   for k, t in (("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"))})
        return EncoderForQuestionAnswering(encoder), tok

    def restore(self, state: dict[str, Any], tokenizer: Tokenizer | None) -> nn.Module:
        return EncoderForQuestionAnswering(EncoderModel(from_dict(ModelConfig, state["model"], "model")))

    # -- features -----------------------------------------------------------
    def windows(self, examples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> list[QAFeature]:
        """Every window of every example, with its targets (from the first answer)."""
        if tokenizer is None:
            raise AttnlabError("the QA model needs its tokenizer (tokenizer.json is missing from the model folder)")
        o, sp = self.opt, self.state["special"]
        types = bool(self.state["model"].get("type_vocab_size"))
        backend = tokenizer.backend
        questions = backend.encode_batch([r["question"] for r in examples], add_special_tokens=False)
        contexts = backend.encode_batch([r["context"] for r in examples], add_special_tokens=False)
        feats = []
        for i, (r, q, c) in enumerate(zip(examples, questions, contexts, strict=False)):
            q_ids = q.ids[: o.max_question_length]
            room = o.max_length - len(q_ids) - 3
            head = [sp["cls"], *q_ids, sp["sep"]]
            offsets = [tuple(x) for x in c.offsets]
            answer = None
            if r["answers"]["text"]:
                a_start = r["answers"]["answer_start"][0]
                answer = char_to_token_span(offsets, a_start, a_start + len(r["answers"]["text"][0]))
            for w in window_starts(len(c.ids), room, min(o.doc_stride, room - 1)):
                ids = c.ids[w:w + room]
                f = QAFeature(i, head + ids + [sp["sep"]],
                              [0] * len(head) + [1] * (len(ids) + 1) if types else None,
                              len(head), offsets[w:w + room])
                if answer is not None and w <= answer[0] and answer[1] < w + len(ids):
                    f.start, f.end = answer[0] - w + len(head), answer[1] - w + len(head)
                feats.append(f)
        return feats

    def features(self, examples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> list[QAFeature]:
        return self.windows(examples, tokenizer)

    def collate(self, features: list[QAFeature], with_cls: bool = True) -> dict[str, torch.Tensor]:
        """Padded inputs, the (B, T) ``allowed`` span positions (context, and [CLS] when ``with_cls``) and targets."""
        ids, mask = pad_batch([f.input_ids for f in features], self.state["special"]["pad"])
        allowed = torch.zeros_like(ids, dtype=torch.bool)
        for i, f in enumerate(features):
            allowed[i, f.context_start:f.context_start + len(f.offsets)] = True
            allowed[i, 0] = with_cls
        batch = {"input_ids": ids, "attention_mask": mask, "allowed": allowed,
                 "start_positions": torch.tensor([f.start for f in features]),
                 "end_positions": torch.tensor([f.end for f in features])}
        if features[0].token_type_ids is not None:
            batch["token_type_ids"] = pad_batch([f.token_type_ids for f in features], 0)[0]
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        start, end = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return span_loss(start, end, batch["start_positions"], batch["end_positions"], batch["allowed"],
                         self.cfg.train.label_smoothing)

    # -- evaluation ---------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Tokenizer | None) -> list[str]:
        """The answer text of each example: its best span over all windows."""
        feats = self.windows(examples, tokenizer)
        device = next(model.parameters()).device
        best: list[tuple[float, str]] = [(float("-inf"), "")] * len(examples)
        order = sorted(range(len(feats)), key=lambda i: len(feats[i].input_ids))
        bs = 2 * self.cfg.train.batch_size
        for b in range(0, len(order), bs):
            chunk = [feats[i] for i in order[b:b + bs]]
            batch = self.collate(chunk, with_cls=False)
            start, end = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                               batch["token_type_ids"].to(device) if "token_type_ids" in batch else None)
            score, s, e = best_spans(start, end, batch["allowed"].to(device), self.opt.max_answer_length)
            for f, sc, si, ei in zip(chunk, score.tolist(), s.tolist(), e.tolist(), strict=False):
                if sc > best[f.example][0]:
                    a, z = f.offsets[si - f.context_start][0], f.offsets[ei - f.context_start][1]
                    best[f.example] = (sc, examples[f.example]["context"][a:z].strip())
        return [text for _, text in best]

    def evaluate(
        self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Tokenizer | None
    ) -> dict[str, float]:
        preds = self.predict(model, examples, tokenizer)
        scores = squad_scores({str(i): p for i, p in enumerate(preds)},
                              {str(i): r["answers"]["text"] for i, r in enumerate(examples)})
        return {"f1": scores["f1"], "exact_match": scores["exact_match"]}
