"""Helpers shared by subcommands: loading a checkpoint for inference."""

from __future__ import annotations

import torch

from attnlab.data import Tokenizer
from attnlab.errors import CheckpointError
from attnlab.train.checkpoint import Checkpoint, load_model
from attnlab.train.loop import resolve_device


def load_for_inference(path: str, device: str = "auto") -> tuple[torch.nn.Module, Tokenizer, Checkpoint, torch.device]:
    """Model (eval mode), tokenizer, checkpoint and device for a checkpoint path."""
    dev = resolve_device(device)
    model, ckpt = load_model(path, dev)
    if ckpt.tokenizer_file is None:
        raise CheckpointError(f"checkpoint '{ckpt.path}' has no tokenizer.json; it was not written by attnlab train")
    return model, Tokenizer.load(ckpt.tokenizer_file), ckpt, dev
