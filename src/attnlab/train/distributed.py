"""Several processes training one model: process group, model wrapping, data shards.

Launch with PyTorch's own launcher; every process runs the same command::

    torchrun --nproc_per_node 2 -m attnlab train gpt-tiny train.parallel=ddp

:func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``), starts the process group (NCCL on GPUs, gloo on CPU) and
picks this process's device. :func:`wrap` applies ``train.parallel``: DDP (replicated
weights, averaged gradients) or FSDP2 (``fully_shard`` per block and on the root: weights,
gradients and optimizer state sharded). ``train.batch_size`` is the *global* micro-batch;
process ``r`` of ``N`` takes rows ``[r·B/N, (r+1)·B/N)`` of it (:meth:`DistEnv.shard`), so
the same config computes the same steps on any number of processes.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from attnlab.config import TrainConfig
from attnlab.errors import AttnlabError


@dataclass
class DistEnv:
    """Where this process stands among the training processes.

    Attributes:
        rank: this process's index (0 for a single process).
        world_size: number of processes.
        local_rank: index on this machine (its GPU).
        device: this process's device.
        mode: ``"none"`` (one process, plain model), ``"ddp"`` or ``"fsdp"``.
        owns_group: whether :func:`setup` started the process group (and :meth:`close` ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mode: str = "none"
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use (several processes, or FSDP)."""
        return self.mode != "none"

    def shard(self, batch_size: int) -> slice:
        """The rows of a global batch of ``batch_size`` this process trains on."""
        per = batch_size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all processes (``t`` itself for one process)."""
        if self.distributed and self.world_size > 1:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        """Wait for every process (no-op for one process)."""
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """End the process group if :func:`setup` started it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise AttnlabError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def setup(tc: TrainConfig, device_name: str) -> DistEnv:
    """Start the process group when several processes (or FSDP) train, and pick the device.

    Args:
        tc: the train config (``parallel``, ``batch_size``).
        device_name: ``"cpu"`` or ``"cuda"`` (already resolved from ``train.device``).

    Raises:
        AttnlabError: the batch does not split evenly over the processes, or more processes
            than GPUs on this machine.
    """
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = torch.device("cpu")
    if device_name == "cuda":
        if local >= torch.cuda.device_count():
            raise AttnlabError(
                f"process {rank} wants GPU {local} but this machine has {torch.cuda.device_count()}; "
                "use torchrun --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if tc.batch_size % world:
        raise AttnlabError(
            f"train.batch_size={tc.batch_size} (the global micro-batch) does not split over {world} processes; "
            f"use a multiple of {world}"
        )
    mode = tc.parallel if (world > 1 or tc.parallel == "fsdp") else "none"
    env = DistEnv(rank=rank, world_size=world, local_rank=local, device=device, mode=mode)
    if mode != "none" and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ:  # launched by torchrun
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        else:  # FSDP in a single process started without torchrun
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        env.owns_group = True
    return env


def _checkpointed_forward(forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():  # evaluation: nothing to recompute
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every residual block's activations in the backward pass instead of storing them.

    Parameter names stay as they are (checkpoints are unaffected).

    Returns:
        The number of blocks changed.
    """
    from attnlab.blocks import Block  # local import: blocks pull in the attention stack

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.forward = functools.partial(_checkpointed_forward, block.forward)
    return len(blocks)


def wrap(model: nn.Module, env: DistEnv) -> nn.Module:
    """Apply ``env.mode`` to a model on ``env.device``: DDP, FSDP2, or nothing.

    For FSDP2 every residual block is its own shard unit (its weights are gathered just
    before it runs and freed after), and the root holds the rest (embeddings, head, norms).
    The model object itself is sharded in place and returned; DDP returns a wrapper whose
    ``.module`` is the model.
    """
    if env.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if env.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from attnlab.blocks import Block

        for block in [m for m in model.modules() if isinstance(m, Block)]:
            fully_shard(block)
        fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (others are returned as they are)."""
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """A context in which backward does (``sync=True``) or skips the gradient reduction.

    Gradient accumulation reduces only on the last micro-batch of a step: DDP's
    ``no_sync``, FSDP2's ``set_requires_gradient_sync``.
    """
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync") and not sync:  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def rank_seed(seed: int, rank: int) -> int:
    """A distinct RNG seed per process (dropout masks differ across data shards)."""
    return seed + 1_000_003 * rank
