"""Which floating-point precision a run computes in, and why.

One rule for every command (train, finetune, eval, generate, serve): ``dtype="auto"`` means
bf16 where the device multiplies bf16 natively — every CUDA GPU attnlab supports, and a CPU
whose oneDNN reports native bf16 (AVX512-BF16 or AMX; there a bf16 matmul runs several times
faster than fp32) — and fp32 elsewhere. The check asks PyTorch/oneDNN, never the CPU's name.
Each caller logs :attr:`Precision.reason`, so which precision ran is never a guess.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from attnlab.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``dtype`` to compute in and one line saying why."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return "bfloat16" if self.dtype == torch.bfloat16 else "float32"

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast on ``device`` for bf16, nothing for fp32."""
        if self.dtype == torch.bfloat16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def resolve_precision(dtype: str, device: torch.device) -> Precision:
    """Turn a ``dtype`` setting (``auto``, ``float32``, ``bfloat16``) into a :class:`Precision`.

    Raises:
        ConfigError: an unknown setting.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if dtype == "float32":
        return Precision(torch.float32, "float32 (asked for)")
    if dtype == "bfloat16":
        return Precision(torch.bfloat16, "bfloat16 autocast (asked for)")
    if device.type == "cuda":
        return Precision(torch.bfloat16, "bfloat16 autocast (auto: CUDA)")
    if device.type == "cpu" and cpu_has_native_bf16():
        return Precision(torch.bfloat16, "bfloat16 autocast (auto: this CPU multiplies bf16 natively)")
    return Precision(torch.float32, f"float32 (auto: no native bf16 on this {device.type})")
