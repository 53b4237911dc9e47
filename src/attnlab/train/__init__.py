"""Training: the loop, optimizer, schedule, checkpoints and metrics."""

from attnlab.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from attnlab.train.loop import train

__all__ = ["load_checkpoint", "load_model", "save_checkpoint", "train"]
