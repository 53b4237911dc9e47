"""Fine-tuning: task recipes (``attnlab finetune TASK RECIPE``) and LoRA injection."""

from __future__ import annotations

from attnlab.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    adapters_disabled,
    base_fingerprint,
    count_parameters,
    inject_lora,
    load_adapter,
    lora_modules,
    lora_parameters,
    merge_lora,
    parameter_summary,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from attnlab.finetune.recipe import TASKS, FinetuneConfig, Task, TaskData, load_finetune_config, task_class
from attnlab.finetune.trainer import load_finetuned, run, save_finetuned

__all__ = [
    "TASKS", "FinetuneConfig", "LoRAConfig", "LoRALinear", "Task", "TaskData", "adapters_disabled", "base_fingerprint",
    "count_parameters",
    "inject_lora", "load_adapter", "load_finetune_config", "load_finetuned", "lora_modules", "lora_parameters",
    "merge_lora", "parameter_summary", "remove_lora", "run", "save_adapter", "save_finetuned", "task_class",
    "unmerge_lora",
]
