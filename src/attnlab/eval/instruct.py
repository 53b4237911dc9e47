"""The instruction-following suite: score a chat model's replies per task, and its preference accuracy.

Records are the conversations of ``attnlab data prepare instruct``'s ``test.jsonl`` (read with
:func:`attnlab.data.chat_data.read_conversations`): a ``task`` (``meta["task"]``), the messages
ending with the gold assistant reply, and ``reference`` (the gold answer; default: that reply)::

    records = read_conversations("data/instruct/test.jsonl")
    res = run_suite(records, lambda messages: session_reply(messages))
    res["headline"]          # {"sentiment-en": 0.81, "translate-en-de": 23.4, ...}
    preference_accuracy(model, tok, template, read_preferences("data/prefs/test.jsonl"))

A task is scored by its family, the part of its name before the first ``-``:

- ``sentiment``: ``accuracy`` (the normalised reply equals the reference label) and ``valid``
  (the share of replies that are one of the record's ``labels``). Normalising strips
  whitespace, ASCII and CJK punctuation and lowercases: ``"Positive."`` is ``positive``.
- ``translate``: corpus ``chrf`` and ``bleu`` (sacrebleu).
- ``reading``: SQuAD ``exact_match`` and ``f1``.
- ``headline``: corpus ``chrf`` and ``rougeL`` (rouge-score).
- ``poem``: ``regular`` (the reply, after an optional leading ``《title》``, is a regular poem:
  :func:`attnlab.data.sources.poetry.regular_body`) and ``form_ok`` (regular *and* of the form
  asked: 5 or 7 characters a line, 4 or 8 lines). The form asked is ``meta["form"]`` when the
  record has one, else the last user message; either is read by :func:`parse_form`
  (五言/七言, 绝句/律诗, 五绝/七律..., or "five-/seven-character", "jueju"/"lüshi").

BLEU and ROUGE-L tokenize by the language of each task's references, detected as
:func:`attnlab.eval.generation.bleu` and :func:`~attnlab.eval.generation.rouge` do (a Chinese
target: sacrebleu's ``zh`` tokenizer, ROUGE over characters); :func:`run_suite` reports the
tokenization of those tasks under ``"tokenization"``.

Shares (accuracy, valid, regular, form_ok) are in [0, 1]; chrF, BLEU, ROUGE-L, EM and F1 in
[0, 100], as everywhere in :mod:`attnlab.eval`. Each task's main number is :data:`HEADLINE`.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from attnlab.data.chat import ChatTemplate, Message, encode_conversation
from attnlab.data.chat_data import Conversation, PreferencePair
from attnlab.data.sources.poetry import regular_body
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ContextOverflowError
from attnlab.eval.generation import bleu, chrf, rouge
from attnlab.eval.lang import tokenization
from attnlab.eval.logprobs import pad_sequences, sequence_logprobs
from attnlab.eval.squad import squad_scores

HEADLINE = {"sentiment": "accuracy", "translate": "chrf", "reading": "f1", "headline": "rougeL", "poem": "form_ok"}
"""The main metric of each task family."""
TOKENIZED = {"translate": "bleu_tokenize", "headline": "rouge_tokenize"}
"""The families scored over words, and the key naming the tokenization their words came from."""

_LABEL_STRIP = string.punctuation + string.whitespace + "。，、！？；：“”‘’「」『』（）《》【】…～"
_TITLE = re.compile(r"^\s*《[^》\n]*》")
_TITLES = re.compile(r"《[^》]*》")
_FORM_WORDS: tuple[tuple[str, str, int], ...] = (
    (r"五言|五[绝絕律]|\b(?:five|5)[- ]char", "chars", 5),
    (r"七言|七[绝絕律]|\b(?:seven|7)[- ]char", "chars", 7),
    (r"[绝絕]句|[五七][绝絕]|\bjueju\b|\bquatrain\b|\bfour[- ]line", "lines", 4),
    (r"律[诗詩]|[五七]律|\bl[üu]shi\b|\bregulated verse\b|\beight[- ]line", "lines", 8),
)


def task_family(task: str) -> str:
    """The family that scores ``task`` (``"sentiment-zh"`` → ``"sentiment"``).

    Raises:
        AttnlabError: an unknown family.
    """
    family = task.split("-", 1)[0]
    if family not in HEADLINE:
        raise AttnlabError(f"unknown instruct task '{task}'; task names start with one of {', '.join(HEADLINE)}")
    return family


# ---------------------------------------------------------------------------------------------- scoring


def normalize_label(text: str) -> str:
    """A reply or label compared as a class label: punctuation and whitespace around it stripped, lowercased."""
    return text.strip(_LABEL_STRIP).lower()


def parse_form(text: str, where: str = "") -> tuple[int, int]:
    """``(characters per line, lines)`` of the regular poem that ``text`` asks for.

    Args:
        text: a prompt or a form name, e.g. ``"写一首五言绝句，题目是《春晓》"`` → ``(5, 4)``,
            ``"Write a seven-character lüshi titled 《…》"`` → ``(7, 8)``.
        where: ``"FILE line N"`` for the error message.

    Raises:
        AttnlabError: the text names no form, or two different ones.
    """
    found: dict[str, set[int]] = {"chars": set(), "lines": set()}
    bare = _TITLES.sub("", text)  # a title may be a form name itself (杜甫《绝句》)
    for pattern, key, value in _FORM_WORDS:
        if re.search(pattern, bare, flags=re.IGNORECASE):
            found[key].add(value)
    if len(found["chars"]) != 1 or len(found["lines"]) != 1:
        problem = "names two forms" if len(found["chars"]) > 1 or len(found["lines"]) > 1 else "names no full form"
        raise AttnlabError(f"{where + ': ' if where else ''}poem prompt {problem} ({text[:40]!r}); it must say 五言 or "
                           "七言 and 绝句 or 律诗 (or give meta 'form', e.g. \"五言绝句\")")
    return found["chars"].pop(), found["lines"].pop()


def poem_form(reply: str) -> tuple[int, int] | None:
    """``(characters per line, lines)`` of a reply that is a regular poem (title allowed), else None."""
    body = regular_body([_TITLE.sub("", reply, count=1)])
    if body is None:
        return None
    return body.index("，"), body.count("，") + body.count("。")


def _record_form(record: Conversation) -> tuple[int, int]:
    form = record.meta.get("form")
    if form is not None:
        if not isinstance(form, str):
            raise AttnlabError(f"{record.where}: 'form' must be a string such as \"五言绝句\", got {form!r}")
        return parse_form(form, record.where)
    users = [m["content"] for m in record.messages if m["role"] == "user"]
    return parse_form(users[-1] if users else "", record.where)


def _score_sentiment(preds: list[str], refs: list[Any], records: Sequence[Conversation]) -> dict[str, float]:
    correct = valid = 0
    for pred, ref, rec in zip(preds, refs, records, strict=True):
        labels = rec.meta.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise AttnlabError(f"{rec.where}: a sentiment record needs 'labels', the list of label strings "
                               "(e.g. [\"positive\", \"negative\"])")
        if not isinstance(ref, str):
            raise AttnlabError(f"{rec.where}: a sentiment reference must be one label string, got {ref!r}")
        p = normalize_label(pred)
        correct += p == normalize_label(ref)
        valid += p in {normalize_label(x) for x in labels}
    return {"accuracy": correct / len(preds), "valid": valid / len(preds)}


def _score_translation(preds: list[str], refs: list[Any], records: Sequence[Conversation]) -> dict[str, float]:
    return {"chrf": chrf(preds, refs)["chrf"], "bleu": bleu(preds, refs)["bleu"]}


def _score_reading(preds: list[str], refs: list[Any], records: Sequence[Conversation]) -> dict[str, float]:
    res = squad_scores({str(i): p for i, p in enumerate(preds)}, {str(i): r for i, r in enumerate(refs)})
    return {"exact_match": res["exact_match"], "f1": res["f1"]}


def _score_headline(preds: list[str], refs: list[Any], records: Sequence[Conversation]) -> dict[str, float]:
    return {"chrf": chrf(preds, refs)["chrf"], "rougeL": rouge(preds, refs, rouge_types=("rougeL",))["rougeL"]}


def _score_poem(preds: list[str], refs: list[Any], records: Sequence[Conversation]) -> dict[str, float]:
    regular = in_form = 0
    for pred, rec in zip(preds, records, strict=True):
        asked = _record_form(rec)  # checked for every record, so a bad prompt is never skipped
        got = poem_form(pred)
        regular += got is not None
        in_form += got == asked
    return {"regular": regular / len(preds), "form_ok": in_form / len(preds)}


_SCORERS: dict[str, Callable[[list[str], list[Any], Sequence[Conversation]], dict[str, float]]] = {
    "sentiment": _score_sentiment, "translate": _score_translation, "reading": _score_reading,
    "headline": _score_headline, "poem": _score_poem,
}


def score_task(task: str, predictions: Sequence[str], references: Sequence[Any],
               records: Sequence[Conversation]) -> dict[str, float]:
    """Score one task's replies with its family's metrics (see the module docstring).

    Args:
        task: the task name, e.g. ``"translate-en-de"``.
        predictions: one reply per record.
        references: one gold answer per record (a string; translation and reading also take a list).
        records: the records themselves (sentiment reads their ``labels``, poems their form).

    Returns:
        ``{metric: value, ..., "n": number of replies}``.

    Raises:
        AttnlabError: an unknown task, lengths that differ, no replies, or a record lacking what its task needs.
    """
    family = task_family(task)
    if not len(predictions) == len(references) == len(records):
        raise AttnlabError(f"task '{task}': {len(predictions)} predictions, {len(references)} references and "
                           f"{len(records)} records; pass one of each per example")
    if not predictions:
        raise AttnlabError(f"task '{task}' has no replies to score")
    return {**_SCORERS[family](list(predictions), list(references), records), "n": len(predictions)}


# ---------------------------------------------------------------------------------------------- the suite


def split_record(record: Conversation) -> tuple[list[Message], Any]:
    """The prompt of a record (its messages without the final assistant turn) and its reference answer.

    Raises:
        AttnlabError: no reference (neither ``reference`` nor a final assistant turn), or a prompt
            that does not end with a user turn.
    """
    msgs = list(record.messages)
    answer = msgs.pop()["content"] if msgs and msgs[-1]["role"] == "assistant" else None
    reference = record.meta.get("reference", answer)
    if reference is None:
        raise AttnlabError(f"{record.where}: no reference answer; give 'reference' or end the conversation with "
                           "the assistant's answer")
    if not msgs or msgs[-1]["role"] != "user":
        raise AttnlabError(f"{record.where}: the prompt must end with a user turn")
    return msgs, reference


def group_by_task(records: Sequence[Conversation], limit: int | None = None) -> dict[str, list[Conversation]]:
    """Records per task (sorted by task name, file order inside), the first ``limit`` of each when given.

    Raises:
        AttnlabError: a record without a string ``task``, an unknown task, or a ``limit`` below 1.
    """
    if limit is not None and limit < 1:
        raise AttnlabError(f"limit must be at least 1 example per task, got {limit}")
    groups: dict[str, list[Conversation]] = defaultdict(list)
    for rec in records:
        task = rec.meta.get("task")
        if not isinstance(task, str):
            raise AttnlabError(f"{rec.where}: the record has no 'task' naming what it tests (e.g. \"sentiment-en\")")
        task_family(task)
        if limit is None or len(groups[task]) < limit:
            groups[task].append(rec)
    return dict(sorted(groups.items()))


def run_suite(records: Sequence[Conversation], reply_fn: Callable[[list[Message]], str], progress: bool = True,
              limit: int | None = None) -> dict[str, Any]:
    """Ask ``reply_fn`` every record's prompt and score the replies per task.

    Args:
        records: conversations with a ``task`` each (see the module docstring).
        reply_fn: ``messages → reply text``; gets the messages without the final assistant turn.
            Replies are compared after stripping surrounding whitespace. A prompt that does not fit
            the model's context (``reply_fn`` raises :class:`~attnlab.errors.ContextOverflowError`)
            is scored as an empty reply, a wrong answer, and counted in the task's ``too_long``, so
            every model is scored on the same records.
        progress: show a progress bar (stderr).
        limit: score at most this many records per task (the first ones in file order).

    Returns:
        ``{"tasks": {task: {metric: value, "n": n}}, "headline": {task: main value},
        "headline_metric": {task: metric name}, "replies": {task: [{"where", "reply", "reference"}]},
        "tokenization": {task: {"lang", "bleu_tokenize" or "rouge_tokenize"}}}``, the last for the
        translation and headline tasks only (``lang``: ``"zh"``, ``"ja"``, ``"ko"`` or ``None``).

    Raises:
        AttnlabError: a record the suite cannot score (see :func:`group_by_task`, :func:`split_record`,
            :func:`score_task`), or a reply that is not a string.
    """
    groups = group_by_task(records, limit)
    if not groups:
        raise AttnlabError("no records to evaluate; pass the test.jsonl of `attnlab data prepare instruct`")
    out: dict[str, Any] = {"tasks": {}, "headline": {}, "headline_metric": {}, "replies": {}, "tokenization": {}}
    bar = tqdm(total=sum(map(len, groups.values())), disable=not progress, unit="reply", desc="instruct")
    try:
        for task, recs in groups.items():
            bar.set_description(task)
            preds, refs, too_long = [], [], 0
            for rec in recs:
                prompt, ref = split_record(rec)
                try:
                    reply = reply_fn(prompt)
                except ContextOverflowError:
                    reply, too_long = "", too_long + 1
                if not isinstance(reply, str):
                    raise AttnlabError(f"{rec.where}: the reply function returned {type(reply).__name__}, not text")
                preds.append(reply.strip())
                refs.append(ref)
                bar.update(1)
            scores = {**score_task(task, preds, refs, recs), "too_long": too_long}
            family = task_family(task)
            metric = HEADLINE[family]
            out["tasks"][task] = scores
            if family in TOKENIZED:
                tk = tokenization(refs).as_dict()
                out["tokenization"][task] = {"lang": tk["lang"], TOKENIZED[family]: tk[TOKENIZED[family]]}
            out["headline"][task] = scores[metric]
            out["headline_metric"][task] = metric
            out["replies"][task] = [{"where": r.where, "reply": p, "reference": ref}
                                    for r, p, ref in zip(recs, preds, refs, strict=True)]
    finally:
        bar.close()
    return out


# ---------------------------------------------------------------------------------------------- preferences


def _encode_reply(tokenizer: Tokenizer, template: ChatTemplate, pair: PreferencePair, reply: str,
                  max_len: int | None) -> tuple[list[int], list[bool], bool]:
    """Ids and assistant mask of ``prompt + reply``, the prompt's oldest tokens cut to fit ``max_len``."""
    ids, mask = encode_conversation(tokenizer, template, [*pair.prompt, {"role": "assistant", "content": reply}],
                                    pair.where)
    if not any(mask):
        raise AttnlabError(f"{pair.where}: the reply encodes to no assistant tokens under this chat template")
    cut = len(ids) - max_len if max_len is not None and len(ids) > max_len else 0
    if cut and any(mask[: cut + 1]):
        raise AttnlabError(f"{pair.where}: the reply alone is longer than the model's context of {max_len} tokens; "
                           "shorten it or remove the pair")
    return ids[cut:], mask[cut:], cut > 0


def preference_accuracy(model: torch.nn.Module, tokenizer: Tokenizer, template: ChatTemplate,
                        pairs: Sequence[PreferencePair], batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """How often the model gives the chosen reply a higher summed log-probability than the rejected one.

    Each reply is scored as the assistant turn after its prompt: the sum of the log-probabilities
    of its assistant tokens (content and end-of-turn marker, the mask of
    :func:`attnlab.data.chat.encode_conversation`), by :func:`attnlab.eval.logprobs.sequence_logprobs`.
    A conversation longer than the model's context (``model.max_context``) loses its oldest
    prompt tokens (``truncated`` counts those sequences); a reply that alone does not fit is an error.

    Args:
        model: a decoder-only LM (put in eval mode for the call).
        tokenizer: its tokenizer, with the template's special tokens.
        template: the chat template the model was trained with.
        pairs: preference pairs (:func:`attnlab.data.chat_data.read_preferences`).
        batch_size: pairs per forward pass (two sequences each).
        progress: show a progress bar (stderr).

    Returns:
        ``{"accuracy": share with chosen > rejected (ties lose), "margin": mean chosen - rejected
        log-prob (nats), "n", "truncated", "tasks": {task: {"accuracy", "margin", "n"}}}``; pairs
        without a ``task`` count in the totals only.

    Raises:
        AttnlabError: no pairs, a batch size below 1, or a pair that cannot be encoded.
    """
    if not pairs:
        raise AttnlabError("no preference pairs to score; pass the test.jsonl of `attnlab data prepare preferences`")
    if batch_size < 1:
        raise AttnlabError(f"batch size must be at least 1, got {batch_size}")
    max_len = getattr(model, "max_context", None)
    device = next(model.parameters()).device
    margins: list[float] = []
    truncated = 0
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(pairs), batch_size), disable=not progress, unit="batch", desc="preferences"):
            items = []
            for pair in pairs[start : start + batch_size]:
                for reply in (pair.chosen, pair.rejected):
                    ids, mask, cut = _encode_reply(tokenizer, template, pair, reply, max_len)
                    items.append((ids, mask))
                    truncated += cut
            ids, mask = pad_sequences(items, device=device)  # (2b, T), (2b, T): chosen, rejected, chosen, ...
            with torch.no_grad():
                scores = sequence_logprobs(model, ids, mask).double().cpu()  # (2b,)
            margins += (scores[0::2] - scores[1::2]).tolist()
    finally:
        model.train(was_training)
    by_task: dict[str, list[float]] = defaultdict(list)
    for pair, m in zip(pairs, margins, strict=True):
        if isinstance(pair.meta.get("task"), str):
            by_task[pair.meta["task"]].append(m)

    def summary(ms: list[float]) -> dict[str, float]:
        return {"accuracy": sum(m > 0 for m in ms) / len(ms), "margin": sum(ms) / len(ms), "n": len(ms)}

    return {**summary(margins), "truncated": truncated,
            "tasks": {task: summary(ms) for task, ms in sorted(by_task.items())}}
