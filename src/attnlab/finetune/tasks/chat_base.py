"""What the chat tasks (``sft``, ``dpo``) share: a decoder, its tokenizer and its chat template.

The template is the init's own when its folder has one (a model imported from Hugging Face, or
fine-tuned here before: ``tokenizer_config.json``); otherwise the default ChatML template, whose
``<|im_start|>`` / ``<|im_end|>`` are added to the tokenizer as special tokens and given new
embedding rows (:func:`attnlab.finetune.init.grow_vocab`). The task state records the template,
so the saved model folder carries it (``tokenizer_config.json``) to ``attnlab chat``, the eval
suite and the Hugging Face export.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from attnlab.config import ModelConfig, from_dict
from attnlab.data.chat import ChatTemplate, add_chat_tokens, template_name
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ConfigError
from attnlab.finetune.init import check_vocab, grow_vocab, load_backbone, make_tokenizer
from attnlab.finetune.recipe import FinetuneConfig
from attnlab.models import DecoderLM

EMBEDDINGS = ("tok_emb", "lm_head")
"""Modules that train beside LoRA adapters when the chat markers are new tokens: the new rows start
equal (the mean embedding), and frozen they would leave ``<|im_start|>`` and ``<|im_end|>``
indistinguishable, in and out."""


@dataclasses.dataclass
class ChatModel:
    """A decoder ready for chat training.

    Attributes:
        model: the decoder (embeddings grown for new chat tokens).
        tokenizer: its tokenizer, chat tokens included.
        template: the chat template.
        added_tokens: how many token ids were added for the template.
        state: the task state to save (model config and template).
    """

    model: DecoderLM
    tokenizer: Tokenizer
    template: ChatTemplate
    added_tokens: int
    state: dict[str, Any]


def build_chat_model(cfg: FinetuneConfig, texts: list[str], log=print) -> ChatModel:
    """The decoder, tokenizer and template a chat task trains, from ``cfg.init``.

    Args:
        cfg: the recipe (``init``, ``tokenizer``, ``model``).
        texts: training text, for ``tokenizer=bpe:N`` (from scratch).
        log: where the one-line choice of template goes.

    Raises:
        ConfigError / AttnlabError: the init is not a decoder language model.
    """
    backbone = load_backbone(cfg.init, cfg.model)
    tok = make_tokenizer(cfg.tokenizer, backbone, texts)
    template = ChatTemplate.load(backbone.folder) if backbone.folder is not None else None
    template = template or ChatTemplate.default()
    tok = add_chat_tokens(tok, template)
    if backbone.model is None:
        mcfg = backbone.config
        if mcfg.arch != "decoder":
            raise ConfigError(f"init '{backbone.source}' is a {mcfg.arch} model; chat tasks need a decoder "
                              "(arch: decoder), e.g. a run folder of `attnlab train gpt-tiny`")
        model = DecoderLM(dataclasses.replace(mcfg, vocab_size=max(mcfg.vocab_size, tok.vocab_size)))
        added = 0
    else:
        model = backbone.model
        if not isinstance(model, DecoderLM):
            raise AttnlabError(f"init '{backbone.source}' holds a {type(model).__name__}; chat tasks fine-tune a "
                               "decoder language model (an attnlab train run, a GPT-2/Llama hf:DIR, or an sft run)")
        added = grow_vocab(model, tok.vocab_size)
    check_vocab(model, tok)
    log(f"chat template: {template_name(template)}"
        + (f"; {added} new token embedding(s) for its markers" if added else ""))
    state = {"model": dataclasses.asdict(model.config),
             "chat_template": {"source": template.source, "bos_token": template.bos_token,
                               "eos_token": template.eos_token},
             "new_tokens": added}
    return ChatModel(model, tok, template, added, state)


def restore_chat_model(state: dict[str, Any]) -> nn.Module:
    """The decoder a saved chat task state describes (weights are loaded after)."""
    return DecoderLM(from_dict(ModelConfig, state["model"], "model"))


def lora_extra_modules(state: dict[str, Any]) -> tuple[str, ...]:
    """What trains beside LoRA adapters for a chat task state: the embeddings when chat tokens are new."""
    return EMBEDDINGS if state.get("new_tokens") else ()


def lora_notice(cfg: FinetuneConfig, added: int) -> str | None:
    """The log line saying that the embeddings train under LoRA, or ``None`` when they do not."""
    if cfg.lora is None or not added:
        return None
    return (f"LoRA: the token embeddings train too ({added} new chat token(s) start equal and must learn to "
            "differ; an sft run as init has them already)")


def template_of(state: dict[str, Any]) -> ChatTemplate:
    """The chat template recorded in a task state."""
    return ChatTemplate(**state["chat_template"])
