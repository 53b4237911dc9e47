"""DPO's data guards and reference cache: token ids made by another tokenizer, and the reference log-probs file.

A preference record may carry ids made elsewhere (``prompt_input_ids`` / ``chosen_input_ids`` /
``rejected_input_ids``, as TRL datasets do) or a ``tokenizer`` fingerprint; DPO never uses them
(it tokenizes the text) but checks them (:func:`check_token_ids`), so data prepared for another
model is refused with its file and line instead of training on mismatched text. The reference
model's log-probabilities are computed once per run and kept in ``RUN/reference_logps.safetensors``
(:func:`write_reference`, atomic; :func:`read_reference` on ``--resume``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from attnlab.data.chat_data import PreferencePair
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.io import durable
from attnlab.io.weights import read_weights_file

REFERENCE_FILE = "reference_logps.safetensors"
"""The run folder's cache of the reference model's log-probabilities."""

ID_FIELDS = {"prompt_input_ids": "prompt", "chosen_input_ids": "chosen", "rejected_input_ids": "rejected"}
"""Token-id fields a record may carry (checked against this tokenizer, never used)."""


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 (hex) of the tokenizer's ``tokenizer.json`` text: the ``tokenizer`` field data may carry."""
    return hashlib.sha256(tokenizer.to_json().encode()).hexdigest()


def check_token_ids(pair: PreferencePair, tokenizer: Tokenizer, fingerprint: str) -> None:
    """Refuse a pair whose token ids or tokenizer fingerprint come from another tokenizer (see the module docstring).

    Raises:
        AttnlabError: ``FILE line N: input ids were made by another tokenizer (...)``.
    """
    fix = "give text, or re-tokenize"
    seen = pair.meta.get("tokenizer")
    if seen is not None and seen != fingerprint:
        raise AttnlabError(f"{pair.where}: input ids were made by another tokenizer (its 'tokenizer' fingerprint "
                           f"{str(seen)[:12]}... is not this model's {fingerprint[:12]}...); {fix}")
    texts = {"prompt": pair.prompt[-1]["content"], "chosen": pair.chosen, "rejected": pair.rejected}
    for name, ids in pair.meta.items():
        if not name.endswith("input_ids"):
            continue
        if name not in ID_FIELDS:
            raise AttnlabError(f"{pair.where}: cannot check token-id field '{name}'; drop it (DPO tokenizes the "
                               f"text) or name it one of {', '.join(ID_FIELDS)}")
        valid = isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                              and 0 <= i < tokenizer.vocab_size for i in ids)
        if not valid or texts[ID_FIELDS[name]].strip() not in tokenizer.decode(ids):
            raise AttnlabError(f"{pair.where}: input ids were made by another tokenizer ({name} do not decode to the "
                               f"{ID_FIELDS[name]} text with this model's tokenizer); {fix}")



def write_reference(path: Path, keys: list[bytes], logps: torch.Tensor) -> None:
    """Write the reference cache atomically (temp file, fsync, rename): ``keys`` (N, 16) uint8, ``logps`` (N, 2)."""
    table = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(len(keys), -1)
    data = safetensors_bytes({"keys": table, "logps": logps.float().contiguous()}, metadata={"format": "attnlab-dpo"})
    durable.atomic_write_bytes(path, data)
    durable.fsync_file(path.parent)


def read_reference(path: Path) -> tuple[dict[bytes, int], torch.Tensor]:
    """``({pair key: row}, logps (N, 2))`` from a file :func:`write_reference` wrote.

    Raises:
        CheckpointError: the file is missing or is not a reference cache.
    """
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing: the run's reference log-probabilities cannot be recomputed from "
                              "trained weights; start a new run (another train.out_dir)")
    tensors = read_weights_file(path)
    keys, logps = tensors.get("keys"), tensors.get("logps")
    if (keys is None or logps is None or keys.dim() != 2 or keys.dtype != torch.uint8 or logps.dim() != 2
            or logps.shape != (keys.shape[0], 2)):
        raise CheckpointError(f"'{path}' is not a DPO reference cache (keys, logps); start a new run")
    rows = {bytes(k.tolist()): i for i, k in enumerate(keys)}
    return rows, logps.float()
