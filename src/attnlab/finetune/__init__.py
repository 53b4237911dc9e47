"""Fine-tuning: LoRA injection (task recipes to come)."""

from __future__ import annotations

from attnlab.finetune.lora import (
    LoRAConfig,
    LoRALinear,
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

__all__ = [
    "LoRAConfig", "LoRALinear", "base_fingerprint", "count_parameters", "inject_lora", "load_adapter",
    "lora_modules", "lora_parameters", "merge_lora", "parameter_summary", "remove_lora", "save_adapter",
    "unmerge_lora",
]
