"""Throughput and MFU accounting, metric files (fanned out to TensorBoard / W&B) and the loss-curve plot."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnlab.config import ModelConfig

if TYPE_CHECKING:
    from attnlab.train.tracking import Tracker

# Dense bf16 tensor-core peak (FLOP/s) by device name, for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def flops_per_token(cfg: ModelConfig, seq_len: int, n_params: int) -> float:
    """Training FLOPs per token: 6·N for the matmuls plus 12·L·d·T for attention scores.

    (The PaLM-paper estimate, as used by nanoGPT; embeddings of positions are included in N
    but cost nothing, a small overcount.)
    """
    return 6 * n_params + 12 * cfg.n_layer * cfg.d_model * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of a known CUDA device, or None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


class MetricsFile:
    """Append-only JSONL of training records (``step`` in every record), passed on to a tracker.

    Args:
        path: the ``metrics.jsonl`` file.
        tracker: where every written record also goes (``train.log_to``'s TensorBoard / W&B;
            :class:`attnlab.train.tracking.Tracker`), or ``None``. Used as a context manager, the
            file opens the tracker on entry and closes it on exit, however the block ends.
    """

    def __init__(self, path: str | Path, tracker: Tracker | None = None):
        self.path = Path(path)
        self.tracker = tracker

    def __enter__(self) -> MetricsFile:
        if self.tracker is not None:
            self.tracker.open()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        """Close the tracker (``failed``: the run ended with an error); the file needs no closing."""
        if self.tracker is not None:
            self.tracker.close(failed)

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (used on resume, so the file reads as one run; the
        tracker hides them too)."""
        if self.tracker is not None:
            self.tracker.resume_after(step)
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        keep = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` and pass it on to the tracker."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log(record)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_losses(records: list[dict[str, Any]], path: str | Path, title: str = "",
                baseline: float | None = None, ylabel: str = "loss (nats / token)") -> Path:
    """Training and validation loss against step, saved as PNG.

    Args:
        records: metric records (``loss`` and/or ``val_loss`` with ``step``).
        path: PNG to write.
        title: plot title.
        baseline: a reference loss drawn as a dashed line (e.g. the unigram entropy).
        ylabel: what the loss is (e.g. ``"MLM loss (nats / masked token)"``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", lw=1.5)
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label=f"unigram entropy {baseline:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
