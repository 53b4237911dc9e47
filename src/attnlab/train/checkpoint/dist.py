"""Distributed checkpoints: every process writes its shard with ``torch.distributed.checkpoint``.

Used when several processes train (or with FSDP). The folder has the layout of
:mod:`attnlab.train.checkpoint`, with the sharded training state added::

    RUN/checkpoints/step_0000500/
        dcp/                # model + optimizer state, one file per process (DCP format)
        model.safetensors   # consolidated weights, written by rank 0 (generate/eval/serve load these)
        state.pt            # step, RNG state of every process, health counters
        config.yaml, tokenizer.json
        meta.json           # format version, step, world size, sha256 of every file (dcp/ included)

It is staged and committed by the same code as any other checkpoint
(:func:`attnlab.train.checkpoint.store.stage_checkpoint` / ``commit_checkpoint``: temporary
folder, rename, then ``latest``), so :func:`attnlab.train.checkpoint.load_checkpoint` and
``load_model`` read it as any other checkpoint. DCP re-shards on load, so a run saved by N
processes resumes on M (one included, without a process group).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from attnlab.config import Config
from attnlab.errors import CheckpointError
from attnlab.train.checkpoint.files import checkpoint_name, write_contents
from attnlab.train.checkpoint.store import commit_checkpoint, stage_checkpoint
from attnlab.train.distributed import DistEnv, unwrap

DCP_DIR = "dcp"


def is_dist_checkpoint(ckpt_dir: str | Path) -> bool:
    """Whether a checkpoint folder holds a sharded (DCP) training state."""
    return (Path(ckpt_dir) / DCP_DIR / ".metadata").exists()


def _unique_names(model: nn.Module) -> set[str]:
    """State-dict names with tied (shared) parameters kept once, as in ``weights_state_dict``."""
    seen: set[int] = set()
    keep = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            keep.add(name)
        seen.add(id(p))
    keep.update(name for name, _ in model.named_buffers())
    return keep


def _broadcast(env: DistEnv, value: Any) -> Any:
    """Rank 0's ``value`` on every process."""
    if not (env.distributed and env.world_size > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _io_message(e: Exception, name: str, root: Path) -> str:
    why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
    return (f"could not save checkpoint {name} in '{root}' ({why}); earlier checkpoints are intact; "
            "free disk space or set train.out_dir to a writable folder, then --resume")


def save_dist_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    config: Config,
    env: DistEnv,
    *,
    state: dict[str, Any],
    tokenizer_file: Path | None = None,
    keep_last: int = 3,
) -> Path:
    """Write a checkpoint from every process (a collective: all must call it).

    Args:
        run_dir: the run folder (on a file system all processes share).
        step: optimizer steps completed.
        model: the wrapped model (DDP or FSDP2) or a plain one.
        optimizers: its torch optimizers.
        config: the run config.
        env: this process's place in the group.
        state: this process's plain resume state (its ``"rng"`` is gathered from every process).
        tokenizer_file: a ``tokenizer.json`` to copy in.
        keep_last: how many complete checkpoints to keep (0 keeps all).

    Returns:
        The checkpoint folder.

    Raises:
        CheckpointError: on every process, when the write failed anywhere (the temporary
            folder is removed; earlier checkpoints are intact).
    """
    root = Path(run_dir) / "checkpoints"
    name = checkpoint_name(step)
    tmp: Path | None = None
    error: str | None = None
    failure: Exception | None = None
    if env.is_main:
        try:
            tmp = stage_checkpoint(run_dir, step)  # rank 0's pid: the single-process saver cleans it up if killed
        except CheckpointError as e:
            error = str(e)
    tmp, error = _broadcast(env, (tmp, error))
    if error:
        raise CheckpointError(error)
    model_sd, optim_sd = get_state_dict(model, optimizers)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / DCP_DIR)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rngs: list[Any] = [state.get("rng")]
    if env.distributed and env.world_size > 1:
        rngs = [None] * env.world_size
        dist.all_gather_object(rngs, state.get("rng"))
    if env.is_main:
        def write(folder: Path) -> None:
            keep = _unique_names(unwrap(model))
            weights = {k: v.detach().contiguous() for k, v in full.items() if k in keep}
            write_contents(folder, weights=weights, config=config, tokenizer_file=tokenizer_file,
                           state={**state, "rng_ranks": rngs, "step": step, "world_size": env.world_size})

        try:
            commit_checkpoint(tmp, step, write=write, meta={"world_size": env.world_size}, keep_last=keep_last)
        except Exception as e:  # noqa: BLE001 - reported on every process, not only here (tmp is removed)
            failure, error = e, str(e) if isinstance(e, CheckpointError) else _io_message(e, name, root)
    error = _broadcast(env, error)
    if error:
        raise CheckpointError(error) from failure
    return root / name


def load_dist_state(ckpt_dir: str | Path, model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Load a DCP checkpoint's model and optimizer state into this process's (re-)sharded model.

    Works with any number of processes, and with a plain model and no process group.
    The checkpoint's checksums should already be verified (``load_checkpoint``).
    """
    model_sd, optim_sd = get_state_dict(model, optimizers)
    target = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():  # one process without a group is intended here, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(target, checkpoint_id=Path(ckpt_dir) / DCP_DIR)
    set_state_dict(model, optimizers, model_state_dict=target["model"], optim_state_dict=target["optim"])


def optimizer_state_by_name(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
    """The optimizers' whole state keyed by parameter name, portable to a sharded copy of ``model``.

    Turns the state of a single-process checkpoint (keyed by parameter position) into what
    :func:`load_optimizer_state_by_name` loads into an FSDP-sharded model.
    """
    return get_optimizer_state_dict(model, optimizers, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state_by_name(model: nn.Module, optimizers: list[torch.optim.Optimizer],
                                 state: dict[str, Any]) -> None:
    """Load :func:`optimizer_state_by_name`'s state, each process keeping its shard."""
    set_optimizer_state_dict(model, optimizers, state, options=StateDictOptions(full_state_dict=True))
