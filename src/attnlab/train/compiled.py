"""Compiled training (``train.compile``): what must happen around ``torch.compile``.

- :func:`prepare_compiled` fills the attention mask caches before the first compiled step,
  so Flex block masks and chunked block plans are read by the graphs as constants instead
  of being rebuilt inside them on every step (or breaking them).
- :func:`no_silent_recompile` turns dynamo's recompile limit, past which PyTorch would
  quietly run the model uncompiled, into an error raised after the state is saved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from attnlab.attention.backends import prepare_masks
from attnlab.errors import AttnlabError


def prepare_compiled(model: torch.nn.Module, loss: Callable[[torch.nn.Module, Any], torch.Tensor], batch: Any,
                     amp: contextlib.AbstractContextManager, log: Callable[[str], None]) -> None:
    """Before the first compiled step: build the attention mask caches the graphs will read.

    Without this, Flex block masks would be traced into the training and validation graphs
    and rebuilt on every call, and chunked block plans would break the graph.

    Args:
        model: the (unwrapped) model.
        loss: ``loss(model, batch)``, the training loss the graphs compute.
        batch: a micro-batch of the shapes training will see.
        amp: the autocast context of the forward passes.
        log: where the one-line summary of the attention backends goes.
    """
    was_training = model.training
    with amp:
        used = prepare_masks(loss, model, batch, grad=True)
        model.eval()
        try:
            used += prepare_masks(loss, model, batch, grad=False)
        finally:
            model.train(was_training)
    kinds = sorted({f"{r['backend']} ({r['mask']})" for r in used})
    log(f"compiled attention: {', '.join(kinds) or 'none'}")


@contextlib.contextmanager
def no_silent_recompile(enabled: bool, save: Callable[[], Path]) -> Iterator[None]:
    """With ``train.compile``: reaching dynamo's recompile limit stops the run with its state saved.

    PyTorch would otherwise carry on running the model uncompiled, several times slower,
    without a word.
    """
    if not enabled:
        yield
        return
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        try:
            yield
        except torch._dynamo.exc.FailOnRecompileLimitHit as e:
            path = save()
            limit = torch._dynamo.config.recompile_limit
            raise AttnlabError(
                f"torch.compile recompiled the model {limit} times (torch._dynamo.config.recompile_limit) and would "
                f"continue uncompiled; the last good state is saved in {path}; find the cause with "
                "TORCH_LOGS=recompiles, or set train.compile=false, then continue with --resume"
            ) from e
