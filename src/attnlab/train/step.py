"""One optimizer step: schedule, micro-batches, autocast, clipping, health check, update.

:class:`TrainStep` is the part of :mod:`attnlab.train.engine` that touches gradients; the
engine around it owns the run (logging, validation, checkpoints, signals).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnlab.config import TrainConfig
from attnlab.train.distributed import DistEnv, gradient_sync
from attnlab.train.health import HealthMonitor, Verdict, clip_gradients, snapshot, update_ratio
from attnlab.train.optim import set_lr
from attnlab.train.schedule import lr_at

LossFn = Callable[[Any], torch.Tensor]
"""The scalar training loss of one (this process's) micro-batch."""
MicroBatch = Callable[[int, int], Any]
"""``micro_batch(step, micro)``: micro-batch ``micro`` of step ``step`` on the device, a pure function of them."""


@dataclass
class StepOutcome:
    """What one optimizer step did.

    Attributes:
        lr: the schedule's learning rate (of a group at ``train.lr``).
        loss: the global loss (mean over processes, summed over micro-batches).
        grad_norm: the global gradient norm before clipping.
        stop_requested: whether any process was asked to stop (Ctrl-C, SIGTERM).
        verdict: the health check's judgement (update applied, skipped, or stop).
        update_ratio: ‖Δθ‖ / ‖θ‖ when measured (on log steps), else ``None``.
    """

    lr: float
    loss: float
    grad_norm: float
    stop_requested: bool
    verdict: Verdict
    update_ratio: float | None = None


class TrainStep:
    """Computes optimizer steps of one run.

    Args:
        tc: the training settings (schedule, ``grad_accum``, ``grad_clip``, ``inject_nan_steps``).
        env: this process's place among the training processes.
        optimizer: the optimizer (its groups carry ``base_lr``; see :func:`attnlab.train.optim.set_lr`).
        wrapped: the (DDP / FSDP) model whose gradient reduction accumulation skips.
        params: the trainable parameters (clipped, measured).
        loss: the loss of a micro-batch.
        micro_batch: the micro-batches.
        amp: the autocast context of forward passes.
        health: the NaN/inf and spike policy.
    """

    def __init__(self, tc: TrainConfig, env: DistEnv, optimizer: Any, wrapped: nn.Module, params: list[nn.Parameter],
                 loss: LossFn, micro_batch: MicroBatch, amp: contextlib.AbstractContextManager,
                 health: HealthMonitor) -> None:
        self.tc, self.env, self.optimizer, self.wrapped = tc, env, optimizer, wrapped
        self.params, self.loss, self.micro_batch, self.amp, self.health = params, loss, micro_batch, amp, health
        self.inject = set(tc.inject_nan_steps)

    def __call__(self, step: int, stop_requested: bool, measure: bool) -> StepOutcome:
        """Run step ``step`` (0-based); ``measure``: also measure the update ratio."""
        tc, device = self.tc, self.env.device
        lr = lr_at(step, tc)
        set_lr(self.optimizer, lr, tc.lr)
        step_loss = torch.zeros((), device=device)
        for micro in range(tc.grad_accum):
            batch = self.micro_batch(step, micro)
            with gradient_sync(self.wrapped, micro == tc.grad_accum - 1):
                with self.amp:
                    loss = self.loss(batch) / tc.grad_accum
                if step + 1 in self.inject and micro == 0:  # testing aid (train.inject_nan_steps)
                    loss = loss * float("nan")
                loss.backward()
            step_loss += loss.detach()
        grad_norm = clip_gradients(self.params, tc.grad_clip)
        # One synchronization per step: the global loss, the norm and any stop request.
        n = self.env.world_size
        flags = self.env.sum(torch.stack([step_loss.float() / n, grad_norm.float() / n,
                                          torch.tensor(float(stop_requested), device=device)]))
        loss_value, norm_value, stops = flags.tolist()
        verdict = self.health.check(step + 1, loss_value, norm_value)
        ratio = None
        if verdict.action == "step":
            before = snapshot(self.params) if measure else None
            self.optimizer.step()
            if before is not None:
                ratio = update_ratio(self.params, before)
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(lr=lr, loss=loss_value, grad_norm=norm_value, stop_requested=stops > 0, verdict=verdict,
                           update_ratio=ratio)
