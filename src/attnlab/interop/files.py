"""The files of a Hugging Face model folder beside ``config.json``: weights and tokenizer.

Weights come as one ``model.safetensors``, as shards listed by ``model.safetensors.index.json``
(``{"weight_map": {weight name: shard file}}``), or, from older checkpoints, as
``pytorch_model.bin`` (sharded: ``pytorch_model.bin.index.json``), read with
``torch.load(weights_only=True)`` only (:func:`attnlab.io.weights.read_weights_file`: an
unreadable file or a pickle holding more than tensors is one error line).

A tokenizer travels as ``tokenizer.json`` (the ``tokenizers`` library's format, which
:class:`~attnlab.data.Tokenizer` wraps) plus ``tokenizer_config.json`` naming the family's
special tokens, so ``transformers.AutoTokenizer.from_pretrained(folder)`` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attnlab.data.tokenizer import EOS_TOKEN, Tokenizer
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.io.weights import read_weights_file

WEIGHT_FILES = (  # (single file, shard index), in order of preference
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All weights of a Hugging Face model folder, by their Hugging Face names.

    Raises:
        CheckpointError: no weight file, a malformed shard index, a shard the index names that
            is missing (or lies outside the folder), a weight the index lists but its shard lacks,
            or a weight file that cannot be read (damaged, or a pickle holding more than tensors).
    """
    for single, index in WEIGHT_FILES:
        if (path / single).is_file():
            return read_weights_file(path / single)
        if (path / index).is_file():
            return _read_shards(path, path / index)
    raise CheckpointError(f"'{path}' has no model.safetensors, model.safetensors.index.json (shards) or "
                          "pytorch_model.bin; is it a complete Hugging Face model folder?")


def _read_shards(path: Path, index: Path) -> dict[str, torch.Tensor]:
    """The weights of the shards ``index`` lists, checked against its ``weight_map``."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"'{index}' is not a valid shard index (it needs a weight_map of weight name → "
                              "shard file); re-save the model") from None
    shards = sorted(set(weight_map.values()))
    root = path.resolve()
    for name in shards:
        file = path / name
        if file.resolve().parent != root:
            raise CheckpointError(f"{index.name} names shard '{name}' outside the folder '{path}'; "
                                  "shards must sit beside the index")
        if not file.is_file():
            raise CheckpointError(f"shard '{name}' named in {index.name} is missing from '{path}'; copy all "
                                  f"{len(shards)} shards")
    state: dict[str, torch.Tensor] = {}
    for name in shards:
        state.update(read_weights_file(path / name))
    absent = sorted(k for k in weight_map if k not in state)
    if absent:
        raise CheckpointError(f"weight '{absent[0]}' is listed in {index.name} under '{weight_map[absent[0]]}' "
                              f"but that shard does not hold it ({len(absent)} such); "
                              "the shards do not match the index")
    return state


# -- tokenizers ---------------------------------------------------------------------------

SPECIAL_ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "gpt2": {"bos_token": ("<s>", EOS_TOKEN), "eos_token": ("</s>", EOS_TOKEN), "unk_token": ("<unk>",),
             "pad_token": ("<pad>", "[PAD]")},
    "t5": {"eos_token": ("</s>", EOS_TOKEN), "unk_token": ("<unk>",), "pad_token": ("<pad>", "[PAD]")},
    "bert": {"unk_token": ("[UNK]",), "sep_token": ("[SEP]",), "pad_token": ("[PAD]",), "cls_token": ("[CLS]",),
             "mask_token": ("[MASK]", "<|mask|>")},
}
"""Family → ``tokenizer_config.json`` role → token strings it may have, the first one in the vocabulary wins."""
SPECIAL_ROLES["llama"] = SPECIAL_ROLES["gpt2"]

_CONFIG_IDS = ("bos_token", "eos_token", "pad_token")
"""Roles whose ids ``config.json`` repeats (``eos_token_id`` ...), so that ``generate`` knows them."""


def as_tokenizer(tokenizer: Tokenizer | str | Path) -> Tokenizer:
    """An attnlab :class:`Tokenizer`, or one loaded from a ``tokenizer.json`` path (or a folder holding one)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, (str, Path)):
        return Tokenizer.load(tokenizer)
    raise AttnlabError(f"tokenizer must be an attnlab Tokenizer or a tokenizer.json path, got "
                       f"{type(tokenizer).__name__}")


def special_tokens(tokenizer: Tokenizer, family: str, vocab_size: int) -> dict[str, str]:
    """The ``tokenizer_config.json`` roles (``eos_token``, ``pad_token`` ...) the tokenizer can fill for ``family``.

    Raises:
        AttnlabError: the tokenizer has more ids than the model's vocabulary.
    """
    if tokenizer.vocab_size > vocab_size:
        raise AttnlabError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                           f"{vocab_size}; export with the tokenizer the model was trained with")
    roles = {}
    for role, candidates in SPECIAL_ROLES[family].items():
        found = next((t for t in candidates if tokenizer.token_id(t) is not None), None)
        if found is not None:
            roles[role] = found
    return roles


def config_ids(tokenizer: Tokenizer, roles: dict[str, str]) -> dict[str, int]:
    """``config.json`` fields (``eos_token_id`` ...) for the special tokens in ``roles``."""
    return {f"{role}_id": tokenizer.token_id(token) for role, token in roles.items() if role in _CONFIG_IDS}


def save_tokenizer(tokenizer: Tokenizer, path: Path, roles: dict[str, str], model_max_length: int) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into the folder ``path``."""
    tokenizer.save(path / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False, **roles}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def read_tokenizer(path: Path) -> Tokenizer | None:
    """The tokenizer of a Hugging Face folder (``tokenizer.json``, or GPT-2's ``vocab.json`` + ``merges.txt``),
    or None when it has neither (e.g. only a SentencePiece ``spiece.model``, which attnlab cannot read).

    Raises:
        AttnlabError: a tokenizer file that is there but does not load.
    """
    if (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
        return Tokenizer.load(path)
    return None
