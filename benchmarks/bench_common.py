"""Small helpers the benchmark scripts share (run them from the repository root or anywhere)."""

from __future__ import annotations

import platform

import torch


def device_label(device: torch.device | str) -> str:
    """The device as results files name it: the GPU's name, or the CPU's architecture and torch threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()})"


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
