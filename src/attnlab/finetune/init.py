"""Where a fine-tuned model starts: a Hugging Face directory, an attnlab run, or a preset.

``cfg.init`` is one of

- ``hf:DIR`` — a Hugging Face checkpoint directory (``config.json`` + weights +
  ``tokenizer.json``), imported with :func:`attnlab.interop.hf.from_hf`;
- a folder written by ``attnlab train`` / ``attnlab finetune`` (run or checkpoint folder);
- ``preset:NAME`` — random initialisation from a model preset (``configs/NAME.yaml``),
  i.e. training from scratch (the vocabulary size comes from the tokenizer).

:func:`load_backbone` returns the weights-bearing module (or ``None`` for a preset), its
:class:`~attnlab.config.ModelConfig` and the tokenizer that came with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from attnlab.config import ModelConfig
from attnlab.config import load as load_config
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, ConfigError

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "<|endoftext|>")
"""Special tokens given to tokenizers trained here (``bpe:N``) so every task finds what it needs."""


@dataclass
class Backbone:
    """A starting point for fine-tuning.

    Attributes:
        model: the pretrained module (``None`` when starting from scratch).
        config: its architecture.
        tokenizer: the tokenizer that came with it (``None`` for a preset).
        source: the ``init`` string, for messages.
    """

    model: Optional[nn.Module]
    config: ModelConfig
    tokenizer: Optional[Tokenizer]
    source: str


def load_backbone(init: str) -> Backbone:
    """Load what ``init`` names (see the module docstring).

    Raises:
        ConfigError: empty or malformed ``init``.
        AttnlabError / CheckpointError: a missing or unreadable checkpoint.
    """
    if not init:
        raise ConfigError("init is not set; use hf:DIR, an attnlab run folder, or preset:NAME (from scratch)")
    if init.startswith("preset:"):
        cfg = load_config(init.split(":", 1)[1]).model
        return Backbone(None, cfg, None, init)
    if init.startswith("hf:"):
        from attnlab.interop.hf import from_hf

        path = Path(init[3:]).expanduser()
        if not path.is_dir():
            raise AttnlabError(f"init '{init}': '{path}' is not a directory; give a Hugging Face checkpoint folder")
        model = from_hf(path)
        tok = Tokenizer.load(path) if (path / "tokenizer.json").is_file() else None
        return Backbone(model, model.config, tok, init)
    from attnlab.train.checkpoint import load_model

    if not Path(init).exists():
        raise AttnlabError(
            f"init '{init}' not found; use hf:DIR, an attnlab run or checkpoint folder, or preset:NAME"
        )
    model, ckpt = load_model(init)
    tok = Tokenizer.load(ckpt.tokenizer_file) if ckpt.tokenizer_file is not None else None
    return Backbone(model, ckpt.config.model, tok, init)


def make_tokenizer(spec: str, backbone: Backbone, texts: list[str]) -> Tokenizer:
    """The run's tokenizer: the backbone's (``spec == ""``), a trained BPE (``bpe:N``) or a file.

    Raises:
        ConfigError: no tokenizer available, or a new tokenizer for a pretrained model.
    """
    if not spec:
        if backbone.tokenizer is None:
            raise ConfigError(
                f"init '{backbone.source}' brings no tokenizer; set tokenizer=bpe:4096 to train one on the task text"
            )
        return backbone.tokenizer
    if backbone.model is not None:
        raise ConfigError(
            f"tokenizer={spec} would not match the pretrained embeddings of '{backbone.source}'; "
            "drop the tokenizer setting (use the model's own) or start from preset:NAME"
        )
    if spec.startswith("bpe:"):
        try:
            size = int(spec[4:])
        except ValueError:
            raise ConfigError(f"tokenizer '{spec}': expected bpe:N with an integer N, e.g. bpe:4096") from None
        return Tokenizer.train_bpe(texts, size, special_tokens=SPECIAL_TOKENS)
    return Tokenizer.load(spec)


def token_id(tokenizer: Tokenizer, token: str, purpose: str) -> int:
    """Id of a special token such as ``[CLS]``, or a clear error naming what it is needed for."""
    i = tokenizer.backend.token_to_id(token)
    if i is None:
        raise AttnlabError(
            f"the tokenizer has no {token} token, needed {purpose}; use a tokenizer trained with it "
            "(tokenizer=bpe:N adds [PAD] [CLS] [SEP] [MASK])"
        )
    return int(i)


def unwrap(model: nn.Module, attr: str) -> Any:
    """``model.attr`` if the model wraps one (e.g. ``EncoderForMaskedLM.encoder``), else the model."""
    return getattr(model, attr, model)
