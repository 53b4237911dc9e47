"""Count the attnlab source files a reader passes through: those whose code runs in one training
step (``attnlab train`` → one optimizer step → a checkpoint) and in one decoder forward pass.

    python tools/trace_files.py            # prints both counts and the files (ARCHITECTURE.md quotes them)

A file counts when any of its functions is called (``sys.setprofile``), after a warm-up run, so
imports alone do not count.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable

import torch

import attnlab
from attnlab import config
from attnlab.cli import main as cli_main
from attnlab.models import build

ROOT = os.path.dirname(attnlab.__file__)


def traced(fn: Callable[[], object]) -> list[str]:
    """The attnlab files (relative to the package) with a function called while ``fn`` runs."""
    seen: set[str] = set()

    def profile(frame, event, arg):  # noqa: ARG001 (sys.setprofile's signature)
        if event == "call" and frame.f_code.co_filename.startswith(ROOT):
            seen.add(os.path.relpath(frame.f_code.co_filename, ROOT))

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return sorted(seen)


def _train(out_dir: str) -> None:
    args = ["train", "gpt-tiny", "train.max_steps=1", "train.eval_batches=1", "train.batch_size=2",
            "model.n_layer=1", f"train.out_dir={out_dir}", "--no-progress"]
    try:
        cli_main(args)
    except SystemExit:
        pass


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        _train(f"{tmp}/warm")  # imports, the tokenized-data cache
        step = traced(lambda: _train(f"{tmp}/run"))
    cfg = config.load("gpt-tiny")
    cfg.model.vocab_size = 100  # the preset takes its tokenizer's size (0) at training time
    model = build(cfg).eval()
    ids = torch.randint(0, 100, (1, 16))
    model(ids)
    forward = traced(lambda: model(ids))
    for name, files in (("one training step", step), ("one forward pass", forward)):
        print(f"{name}: {len(files)} files")
        print("".join(f"  {f}\n" for f in files), end="")


if __name__ == "__main__":
    main()
