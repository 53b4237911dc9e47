"""Where a fine-tuned model starts: a Hugging Face directory, an attnlab run, or a preset.

``cfg.init`` is one of

- ``hf:DIR`` — a Hugging Face checkpoint directory (``config.json`` + weights +
  ``tokenizer.json``), imported with :func:`attnlab.interop.hf.from_hf`;
- a folder written by ``attnlab train`` (run or checkpoint folder);
- a causal-LM run of ``attnlab finetune`` (``lm``, ``sft``, ``dpo``: ``RUN`` or ``RUN/model``), with any
  LoRA adapters merged into its weights, so SFT can start from an adapted model and DPO from SFT;
- ``preset:NAME`` — random initialisation from a model preset (``configs/NAME.yaml``),
  i.e. training from scratch (the vocabulary size comes from the tokenizer; the recipe's
  ``model`` section overrides the preset's architecture, e.g. ``model.n_layer=2``).

A task may accept more starting points of its own (``classify`` takes ``init: bow``, a
bag-of-words baseline that needs no backbone).

:func:`load_backbone` returns the weights-bearing module (or ``None`` for a preset), its
:class:`~attnlab.config.ModelConfig` and the tokenizer that came with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from attnlab.config import ModelConfig, from_dict
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
        folder: the folder its tokenizer came from (where ``tokenizer_config.json`` and its
            chat template would be), or ``None``.
    """

    model: nn.Module | None
    config: ModelConfig
    tokenizer: Tokenizer | None
    source: str
    folder: Path | None = None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_backbone(init: str, model: dict[str, Any] | None = None) -> Backbone:
    """Load what ``init`` names (see the module docstring).

    Args:
        init: ``hf:DIR``, an attnlab run or checkpoint folder, or ``preset:NAME``.
        model: architecture overrides (a partial ``model`` section), for ``preset:NAME`` only.

    Raises:
        ConfigError: empty or malformed ``init``, a bad override, or overrides for a pretrained init.
        AttnlabError / CheckpointError: a missing or unreadable checkpoint.
    """
    if not init:
        raise ConfigError("init is not set; use hf:DIR, an attnlab run folder, or preset:NAME (from scratch), "
                          "e.g. init=hf:/path/to/all-MiniLM-L6-v2")
    if init.startswith("preset:"):
        cfg = load_config(init.split(":", 1)[1]).model
        if model:
            cfg = from_dict(ModelConfig, _merge(dataclasses.asdict(cfg), model), "model")
        return Backbone(None, cfg, None, init)
    if model:
        raise ConfigError(f"model.{next(iter(model))} can only change a preset (init=preset:NAME); the architecture "
                          f"of '{init}' is fixed by its weights, so drop the model section")
    if init.startswith("hf:"):
        from attnlab.interop.hf import from_hf

        path = Path(init[3:]).expanduser()
        if not path.is_dir():
            raise AttnlabError(f"init '{init}': '{path}' is not a directory; give a Hugging Face checkpoint folder")
        net = from_hf(path)
        tok = Tokenizer.load(path) if (path / "tokenizer.json").is_file() else None
        return Backbone(net, net.config, tok, init, path)
    from attnlab.train.checkpoint import load_model

    if not Path(init).exists():
        raise AttnlabError(
            f"init '{init}' not found; use hf:DIR, an attnlab run or checkpoint folder, or preset:NAME"
        )
    if finetuned_folder(init) is not None:
        return _finetuned_backbone(init)
    net, ckpt = load_model(init)
    tok = Tokenizer.load(ckpt.tokenizer_file) if ckpt.tokenizer_file is not None else None
    return Backbone(net, ckpt.config.model, tok, init, None if ckpt.tokenizer_file is None
                    else Path(ckpt.tokenizer_file).parent)


def finetuned_folder(path: str | Path) -> Path | None:
    """``path``'s fine-tuned model folder (``RUN/model`` or the folder itself, holding ``task.json``), or ``None``."""
    p = Path(path)
    for folder in (p / "model", p):
        if (folder / "task.json").is_file():
            return folder
    return None


def _finetuned_backbone(init: str) -> Backbone:
    """A causal LM fine-tuned here (``lm`` / ``sft`` / ``dpo``), LoRA merged, as the next run's start."""
    from attnlab.finetune.lora import remove_lora
    from attnlab.finetune.saved import load_finetuned
    from attnlab.models import DecoderLM

    folder = finetuned_folder(init)
    task, net, tok = load_finetuned(folder)
    if not isinstance(net, DecoderLM):
        raise AttnlabError(f"init '{init}' is a fine-tuned {task.name} model ({type(net).__name__}); only causal "
                           "language models (tasks lm, sft, dpo) can start another fine-tuning")
    remove_lora(net, merge=True)
    return Backbone(net.train(), net.config, tok, init, folder)


def grow_vocab(model: nn.Module, vocab_size: int) -> int:
    """Give a decoder embeddings (and LM-head rows) for new token ids; returns how many were added.

    New rows start at the mean of the existing ones (a neutral token the model already
    "understands"), so adding chat markers does not shift a pretrained model's outputs on old
    tokens. A tied head stays tied.
    """
    old = model.config.vocab_size
    if vocab_size <= old:
        return 0
    emb = model.tok_emb.weight.data  # (V, D)
    grown = nn.Embedding(vocab_size, emb.shape[1], device=emb.device, dtype=emb.dtype)
    grown.weight.data[:old] = emb
    grown.weight.data[old:] = emb.mean(0, keepdim=True)
    tied = model.lm_head.weight is model.tok_emb.weight
    model.tok_emb = grown
    head = nn.Linear(emb.shape[1], vocab_size, bias=False, device=emb.device, dtype=emb.dtype)
    if tied:
        head.weight = grown.weight
    else:
        w = model.lm_head.weight.data  # (V, D)
        head.weight.data[:old] = w
        head.weight.data[old:] = w.mean(0, keepdim=True)
    model.lm_head = head
    model.config = dataclasses.replace(model.config, vocab_size=vocab_size)
    return vocab_size - old


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


def encoder_special_ids(tokenizer: Tokenizer, purpose: str) -> dict[str, int]:
    """``{"cls", "sep", "pad"}`` ids for ``[CLS] a [SEP] (b [SEP])`` encoder inputs.

    BERT vocabularies and ``tokenizer=bpe:N`` have ``[CLS]``, ``[SEP]`` and ``[PAD]``. A
    tokenizer from ``attnlab train`` (an encoder pretrained with masked LM) has none of them
    but knows ``<|endoftext|>`` as its document boundary; it then plays all three roles (padding
    is masked out anyway).

    Raises:
        AttnlabError: neither the three tokens nor ``<|endoftext|>`` are in the vocabulary.
    """
    names = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]"}
    ids = {k: tokenizer.backend.token_to_id(t) for k, t in names.items()}
    if any(i is None for i in ids.values()) and tokenizer.eos_id is not None:
        return dict.fromkeys(names, int(tokenizer.eos_id))
    return {k: token_id(tokenizer, t, purpose) for k, t in names.items()}


def check_vocab(model: nn.Module, tokenizer: Tokenizer) -> None:
    """Raise unless the model has an embedding for every token of ``tokenizer``.

    Raises:
        AttnlabError: the tokenizer is larger than ``model.config.vocab_size``.
    """
    if model.config.vocab_size < tokenizer.vocab_size:
        raise AttnlabError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                           f"{model.config.vocab_size} embeddings; use the model's own tokenizer")


def unwrap(model: nn.Module, attr: str) -> Any:
    """``model.attr`` if the model wraps one (e.g. ``EncoderForMaskedLM.encoder``), else the model."""
    return getattr(model, attr, model)


def build_encoder(backbone: Backbone, tok: Tokenizer, task: str, max_length: int) -> nn.Module:
    """The :class:`~attnlab.models.EncoderModel` a task fine-tunes, from its backbone.

    A preset is built with the tokenizer's vocabulary; a pretrained model gives its encoder
    (unwrapping an MLM model). Either is checked against the tokenizer and ``max_length``.

    Raises:
        ConfigError: the preset is not an encoder, or ``max_length`` exceeds its context.
        AttnlabError: the checkpoint holds no encoder, or the tokenizer outgrows its embeddings.
    """
    from attnlab.models import EncoderModel

    cfg = backbone.config
    if backbone.model is None:
        if cfg.arch != "encoder":
            raise ConfigError(f"init '{backbone.source}' is a {cfg.arch} model; {task} needs an encoder "
                              "(arch: encoder), e.g. init=preset:bert-tiny or a BERT checkpoint hf:DIR")
        encoder = EncoderModel(dataclasses.replace(cfg, vocab_size=cfg.vocab_size or tok.vocab_size))
    else:
        encoder = unwrap(backbone.model, "encoder")
        if not isinstance(encoder, EncoderModel):
            raise AttnlabError(f"init '{backbone.source}' holds a {type(backbone.model).__name__}; {task} needs an "
                               "encoder (a BERT-layout hf:DIR, an encoder run, or preset:bert-tiny)")
    check_vocab(encoder, tok)
    if max_length > encoder.config.block_size:
        raise ConfigError(f"options.max_length={max_length} exceeds the encoder's context of "
                          f"{encoder.config.block_size} tokens; lower options.max_length")
    return encoder
