"""Supervised fine-tuning for chat: ``attnlab finetune sft RECIPE`` teaches a decoder to answer.

The data are conversations (:func:`attnlab.data.chat_data.read_conversations`: OpenAI
``messages``, ShareGPT ``conversations`` or Alpaca ``instruction``/``output`` records; a bad
record is refused as ``FILE line N: ...``). ``init`` is a decoder: an ``attnlab train`` run, a
GPT-2/Llama ``hf:DIR``, an earlier ``lm``/``sft``/``dpo`` run, or ``preset:NAME`` with
``tokenizer: bpe:N``. The chat template is the init's own, or ChatML with ``<|im_start|>`` /
``<|im_end|>`` added as new tokens (:mod:`attnlab.finetune.tasks.chat_base`); the saved model
carries it in ``tokenizer_config.json``::

    attnlab train gpt-tiny                                   # a Shakespeare GPT in runs/gpt-tiny
    attnlab data prepare instruct --out data/instruct
    attnlab finetune sft sft-chat                            # runs/sft-chat/model chats in ChatML

Each conversation is rendered with the template and tokenized with its assistant mask
(:func:`attnlab.data.chat.encode_conversation`). **The loss comes from assistant tokens only**:
the model learns to write the replies (and their end-of-turn marker, so it learns to stop), not
to imitate the user or the system prompt. A prediction is trained when its *target* token is an
assistant token of the same conversation.

**A conversation longer than the window is skipped, not truncated**, and the skips are counted in
one log line (``skipped N of M conversations longer than S tokens (first: FILE line K)``).
Cutting it would remove the end of a reply and its end-of-turn marker, and the model would learn
replies that run on without stopping (or, cut on the left, answers to questions it never saw).
When nothing is left, the run is refused with the fix (raise ``options.seq_len`` or shorten the data).

With ``options.pack: true`` (the default) several conversations share a window of
``seq_len + 1`` tokens (first fit, in file order, among the last :data:`PACK_OPEN` windows:
deterministic), with document ids so they never attend to each other
(:meth:`attnlab.models.DecoderLM.forward`'s ``document_ids``). Positions are not reset per
conversation; with learned positions a packed conversation trains at an offset, which
``options.pack: false`` (one conversation per row, padded) avoids at the cost of padding.

Under LoRA, when the template's markers are new tokens, the token embeddings (and the tied or
untied LM head) train too: the new rows start equal (the mean embedding), and frozen they would
leave ``<|im_start|>`` and ``<|im_end|>`` indistinguishable, in and out. An init that has them
already (an earlier SFT run, an imported chat model) trains the adapters alone.

The metric is the assistant-token loss on ``val`` (lower is better; ``val_start`` is the init's),
with the token accuracy of the same predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.data.chat import ChatTemplate, encode_conversation
from attnlab.data.chat_data import Conversation, read_conversations
from attnlab.data.mlm import IGNORE_INDEX
from attnlab.data.tasks import pad_batch
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ConfigError
from attnlab.finetune.recipe import Task
from attnlab.finetune.tasks.chat_base import (
    build_chat_model,
    lora_extra_modules,
    lora_notice,
    restore_chat_model,
    template_of,
)
from attnlab.validation import NON_NEGATIVE, Range, check_ranges

PACK_OPEN = 32
"""Packing looks for room in the last this-many windows (first fit), so it stays linear in the data."""

CACHED_SPLITS = 4
"""Example lists whose windows are kept (train, val, test and one more), so evaluation encodes each once."""



@dataclass
class SFTOptions:
    """Options of the ``sft`` task (the recipe's ``options`` section).

    Attributes:
        seq_len: tokens a training row predicts (a window holds ``seq_len + 1``); ``0``: the
            model's ``block_size``. Longer conversations are skipped and counted.
        pack: several conversations per window (document-masked); ``false``: one per row, padded.
    """

    seq_len: int = 0
    pack: bool = True

    _RANGES: ClassVar[dict[str, Range]] = {"seq_len": NON_NEGATIVE.with_note("0: the model's block size")}

    def __post_init__(self) -> None:
        check_ranges(self, "options", self._RANGES)


@dataclass
class Window:
    """One training row: one or more whole conversations.

    Attributes:
        ids: token ids (at most ``seq_len + 1``).
        trained: per token, whether it is a target the loss trains on (an assistant token that
            is not the first of its conversation, so it is predicted from its own conversation).
        docs: per token, the index of its conversation in the row.
    """

    ids: list[int]
    trained: list[bool]
    docs: list[int]


def pack_windows(lengths: list[int], capacity: int, open_windows: int = PACK_OPEN) -> list[list[int]]:
    """Which conversations share each window: first fit in order among the last ``open_windows`` windows.

    Args:
        lengths: token count of each conversation (each at most ``capacity``).
        capacity: tokens per window.
        open_windows: how many of the newest windows may still take a conversation.

    Returns:
        Per window, the indices of its conversations, in order (a pure function of the arguments).
    """
    windows: list[list[int]] = []
    free: list[int] = []
    for i, n in enumerate(lengths):
        for w in range(max(0, len(windows) - open_windows), len(windows)):
            if free[w] >= n:
                windows[w].append(i)
                free[w] -= n
                break
        else:
            windows.append([i])
            free.append(capacity - n)
    return windows


def _file_of(where: str) -> str:
    """``FILE`` of ``"FILE line N"`` / ``"FILE record N"``."""
    for sep in (" line ", " record "):
        if sep in where:
            return where.rsplit(sep, 1)[0]
    return where


class SFTTask(Task):
    """Supervised fine-tuning on conversations, loss on assistant tokens; see the module docstring."""

    name = "sft"
    Options = SFTOptions
    metric = "loss"
    higher_is_better = False
    eval_at_start = True

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self._encoded: dict[int, tuple[list[Conversation], list[Window]]] = {}
        self._template: ChatTemplate | None = None

    # -- data ---------------------------------------------------------------
    def read(self, path: str) -> list[Conversation]:  # type: ignore[override]
        return read_conversations(path)

    # -- model --------------------------------------------------------------
    def build(self, train: list[Conversation]) -> tuple[nn.Module, Tokenizer]:  # type: ignore[override]
        texts = [m["content"] for c in train for m in c.messages]
        chat = build_chat_model(self.cfg, texts, self.log)
        model = chat.model
        if self.opt.seq_len > model.max_context:
            raise ConfigError(f"options.seq_len={self.opt.seq_len} exceeds the model's context of "
                              f"{model.max_context} tokens; lower options.seq_len")
        if self.opt.pack and model.config.mixer == "linear":
            raise ConfigError("options.pack needs softmax attention to keep packed conversations apart "
                              "(this model has mixer=linear); set options.pack=false")
        self.state = chat.state
        self.head_modules = lora_extra_modules(self.state)
        if notice := lora_notice(self.cfg, chat.added_tokens):
            self.log(notice)
        self._template = chat.template
        return model, chat.tokenizer

    def restore(self, state: dict[str, Any], tokenizer: Tokenizer | None) -> nn.Module:
        self.head_modules = lora_extra_modules(state)
        return restore_chat_model(state)

    @property
    def template(self) -> ChatTemplate:
        """The chat template the conversations are rendered with."""
        if self._template is None:
            self._template = template_of(self.state)
        return self._template

    def _seq_len(self) -> int:
        return self.opt.seq_len or int(self.state["model"]["block_size"])

    # -- features -----------------------------------------------------------
    def features(self, examples: list[Conversation], tokenizer: Tokenizer) -> list[Window]:  # type: ignore[override]
        """Windows of whole conversations (packed unless ``options.pack`` is false); too long ones skipped.

        Raises:
            AttnlabError: no conversation fits the window, or one has no assistant token to learn.
        """
        key = id(examples)
        if key not in self._encoded:  # each split is encoded (and its skips logged) once
            if len(self._encoded) >= CACHED_SPLITS:
                del self._encoded[next(iter(self._encoded))]
            self._encoded[key] = (examples, self._windows(examples, tokenizer))  # the list is held: its id stays its
        return self._encoded[key][1]

    def _windows(self, examples: list[Conversation], tokenizer: Tokenizer) -> list[Window]:
        capacity = self._seq_len() + 1
        kept: list[tuple[list[int], list[bool]]] = []
        skipped: list[Conversation] = []
        for conv in examples:
            ids, assistant = encode_conversation(tokenizer, self.template, conv.messages, conv.where)
            trained = [False] + assistant[1:]  # the first token is never predicted from its own conversation
            if not any(trained):
                raise AttnlabError(f"{conv.where}: the template gives the assistant's turns no token to learn; "
                                   "check the conversation and the chat template")
            if len(ids) > capacity:
                skipped.append(conv)
            else:
                kept.append((ids, trained))
        if skipped:
            self.log(f"skipped {len(skipped)} of {len(examples)} conversations longer than {capacity} tokens "
                     f"(first: {skipped[0].where})")
        if not kept:
            raise AttnlabError(f"every conversation of '{_file_of(skipped[0].where)}' is longer than {capacity} "
                               f"tokens (options.seq_len + 1); raise options.seq_len (the model's context is "
                               f"{self.state['model']['block_size']}) or give shorter conversations")
        groups = (pack_windows([len(ids) for ids, _ in kept], capacity) if self.opt.pack
                  else [[i] for i in range(len(kept))])
        windows = []
        for group in groups:
            win = Window([], [], [])
            for doc, i in enumerate(group):
                ids, trained = kept[i]
                win.ids += ids
                win.trained += trained
                win.docs += [doc] * len(ids)
            windows.append(win)
        return windows

    def length(self, feature: Window) -> int | None:  # type: ignore[override]
        return None if self.opt.pack else len(feature.ids)  # unpacked rows: batch similar lengths together

    def collate(self, features: list[Window]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """``input_ids`` (B, T), ``targets`` (B, T) (``IGNORE_INDEX`` but where the next token is trained) and,
        when packing, ``document_ids`` (B, T) (padding is its own document, ``-1``)."""
        ids, _ = pad_batch([f.ids for f in features], 0)  # (B, T+1)
        trained, _ = pad_batch([[int(t) for t in f.trained] for f in features], 0)  # (B, T+1), 0 on padding
        targets = ids[:, 1:].masked_fill(trained[:, 1:] == 0, IGNORE_INDEX)  # (B, T)
        batch = {"input_ids": ids[:, :-1], "targets": targets}
        if self.opt.pack:
            docs, _ = pad_batch([f.docs for f in features], -1)  # (B, T+1)
            batch["document_ids"] = docs[:, :-1]
        return batch

    # -- loss and metrics ---------------------------------------------------
    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["input_ids"], document_ids=batch.get("document_ids")).float()  # (B, T, V)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self._logits(model, batch)  # (B, T, V)
        smoothing = self.cfg.train.label_smoothing if model.training else 0.0
        return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX,
                               label_smoothing=smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: list[Conversation],  # type: ignore[override]
                 tokenizer: Tokenizer) -> dict[str, float]:
        """Assistant-token loss (nats), its perplexity, token accuracy (argmax) and the token count."""
        feats = self.features(examples, tokenizer)
        device = next(model.parameters()).device
        total, correct, count = 0.0, 0, 0
        bs = self.cfg.train.batch_size
        for start in range(0, len(feats), bs):
            batch = {k: v.to(device) for k, v in self.collate(feats[start:start + bs]).items()}
            logits = self._logits(model, batch).flatten(0, 1)  # (B*T, V)
            targets = batch["targets"].flatten()  # (B*T,)
            keep = targets != IGNORE_INDEX
            total += F.cross_entropy(logits[keep], targets[keep], reduction="sum").item()
            correct += int((logits[keep].argmax(-1) == targets[keep]).sum())
            count += int(keep.sum())
        loss = total / count
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "accuracy": correct / count, "tokens": float(count)}
