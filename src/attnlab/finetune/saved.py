"""A fine-tuned model folder (``RUN/model/``): written atomically, verified on load.

The folder holds ``model.safetensors``, ``recipe.yaml``, ``task.json``, ``metrics.json``, the
tokenizer and ``checksums.json`` (sha256 of every other file); it is written through
:func:`attnlab.io.durable.write_folder` (staged, fsynced, renamed into place) and checked with
:func:`attnlab.io.durable.verify` before :func:`load_finetuned` rebuilds task, model and tokenizer.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from attnlab.data.chat import ChatTemplate
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import CheckpointError
from attnlab.finetune.lora import count_parameters, inject_lora
from attnlab.finetune.recipe import FinetuneConfig, Task, finetune_config_from_dict, task_class
from attnlab.io import durable
from attnlab.io.weights import load_weights, read_weights_file, weights_state_dict

MODEL_DIR = "model"
WEIGHTS = "model.safetensors"

__all__ = ["MODEL_DIR", "load_finetuned", "save_finetuned"]


def save_finetuned(
    folder: str | Path, model: nn.Module, tokenizer: Tokenizer | None, cfg: FinetuneConfig,
    task_state: dict[str, Any], metrics: dict[str, Any],
) -> Path:
    """Write a fine-tuned model folder atomically (temp folder, fsync, rename).

    Holds ``model.safetensors``, ``recipe.yaml``, ``task.json``, ``metrics.json``, the
    tokenizer and ``checksums.json`` (sha256 of every file); and ``tokenizer_config.json`` with the
    chat template when ``task_state["chat_template"]`` holds one (``{"source", "bos_token", "eos_token"}``).
    """
    from safetensors.torch import save as safetensors_bytes

    def fill(tmp: Path) -> None:
        durable.write_file(tmp / WEIGHTS, safetensors_bytes(weights_state_dict(model), metadata={"format": "pt"}))
        cfg.save(tmp / "recipe.yaml")
        durable.write_file(tmp / "task.json", json.dumps(task_state, indent=1).encode())
        durable.write_file(tmp / "metrics.json", json.dumps(metrics, indent=1).encode())
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer.json")
        if task_state.get("chat_template"):  # chat models: tokenizer_config.json as Hugging Face keeps it
            ChatTemplate(**task_state["chat_template"]).save(tmp)

    return durable.write_folder(folder, fill)


def load_finetuned(path: str | Path, device: str | torch.device = "cpu") -> tuple[Task, nn.Module, Tokenizer | None]:
    """Task, model (eval mode) and tokenizer of a fine-tuned run or its ``model/`` folder.

    Raises:
        CheckpointError: missing folder, missing file or checksum mismatch.
    """
    p = Path(path)
    if (p / MODEL_DIR / "task.json").exists():
        p = p / MODEL_DIR
    if not (p / "task.json").exists():
        raise CheckpointError(f"'{path}' is not a fine-tuned model (no {MODEL_DIR}/task.json); "
                              "run attnlab finetune first")
    durable.verify(p, fix="; re-run the fine-tuning")
    raw = yaml.safe_load((p / "recipe.yaml").read_text())
    cfg = finetune_config_from_dict(raw)
    task = task_class(cfg.task)(cfg)
    tok = Tokenizer.load(p / "tokenizer.json") if (p / "tokenizer.json").exists() else None
    task.state = json.loads((p / "task.json").read_text())
    model = task.restore(task.state, tok)
    if cfg.lora is not None:
        inject_lora(model, cfg.lora, trainable_extra=task.head_modules)
    load_weights(model, read_weights_file(p / WEIGHTS), source=f"fine-tuned model '{p}'")
    return task, model.to(device).eval(), tok


def _memory_report(model: nn.Module, device: torch.device) -> dict[str, float]:
    trainable, total = count_parameters(model)
    mib = 1024.0 ** 2
    report = {
        "params_trainable": trainable,
        "params_total": total,
        "weights_mib": total * 4 / mib,
        # fp32 gradients + AdamW's two moments, only for trainable parameters
        "grads_optimizer_mib": trainable * 12 / mib,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if device.type == "cuda":
        report["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / mib
    return report
