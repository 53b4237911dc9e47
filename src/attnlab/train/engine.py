"""The training engine: one loop for pretraining and every fine-tuning task.

A recipe (:func:`attnlab.train.loop.train`, :func:`attnlab.finetune.trainer.run`) builds its
model and says how to get micro-batches, the loss and the validation metrics (a
:class:`Recipe`); the :class:`Engine` does the rest::

    engine = Engine(recipe, env, ckpt=ckpt, log=log, progress=True)   # resume, wrap, optimizer, compile
    result = engine.run()                                              # steps, validation, checkpoints

- the step (:class:`attnlab.train.step.TrainStep`): per-group schedule, micro-batches with
  gradient accumulation, autocast, clipping, NaN/inf and spike checks, the update;
- the run: resume (weights, optimizer moments, RNG, health counters), DDP / FSDP2,
  ``train.compile``, Ctrl-C / SIGTERM saving, periodic validation and checkpoints,
  ``metrics.jsonl`` (and ``train.log_to``'s TensorBoard / W&B, :mod:`attnlab.train.tracking`) and
  the progress bar.

Exactness: when ``micro_batch(step, micro)`` is a pure function of its arguments (and the
run's seed), a run stopped at any point and resumed from its last checkpoint computes the
same losses as one that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from attnlab.train.checkpoint import Checkpoint, load_weights, save_checkpoint
from attnlab.train.checkpoint.dist import (
    is_dist_checkpoint,
    load_dist_state,
    load_optimizer_state_by_name,
    optimizer_state_by_name,
    save_dist_checkpoint,
)
from attnlab.train.compiled import no_silent_recompile, prepare_compiled
from attnlab.train.distributed import DistEnv, enable_activation_checkpointing, wrap
from attnlab.train.health import HealthMonitor, NonFiniteError
from attnlab.train.metrics import MetricsFile
from attnlab.train.optim import build_optimizer, torch_optimizers
from attnlab.train.run_state import StopFlag, check_same_optimizer, resume_changes, rng_state, set_rng_state
from attnlab.train.step import MicroBatch, StepOutcome, TrainStep
from attnlab.train.tracking import Tracker

Metrics = dict[str, float]


def quiet(message: str) -> None:
    """A log that drops its messages (processes other than rank 0)."""


def _plain(cfg: Any) -> dict[str, Any]:
    """A recipe's config as a plain dict (the trackers' run config)."""
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else {}


@dataclass
class Recipe:
    """What a training recipe hands the :class:`Engine`.

    Attributes:
        cfg: the run's config (``cfg.train`` its settings; saved in every checkpoint).
        model: the model, built (seeded) and on the device; not yet wrapped.
        loss: ``loss(model, batch)``, the scalar loss of one micro-batch.
        micro_batch: ``micro_batch(step, micro)``, this process's rows on the device.
        validate: ``validate(model, step) -> (metrics, record)``; the engine writes ``record``
            to ``metrics.jsonl`` (rank 0) and the recipe keeps what it wants (the best model).
        describe: one line for a validation's metrics (shown on the progress bar's log).
        amp: the autocast context of forward passes.
        save: the single-process checkpoint writer (:func:`attnlab.train.checkpoint.save_checkpoint`).
        tokenizer_file: a tokenizer copied into checkpoints.
        tokens_per_step: global tokens per step (0: tokens/s and MFU are not reported).
        flops_per_step: model FLOPs per step, for MFU.
        peak_flops: the device's peak FLOP/s (``None``: unknown, no MFU).
        state: the recipe's own resume state (JSON-like), saved in checkpoints.
        step_metrics: extra scalars of the step just taken (``{name: 0-dim tensor}``, e.g. DPO's reward
            accuracy), called after every step; logged like the loss: averaged over the logging window
            and the processes into ``metrics.jsonl`` and the progress bar.
    """

    cfg: Any
    model: nn.Module
    loss: Callable[[nn.Module, Any], torch.Tensor]
    micro_batch: MicroBatch
    validate: Callable[[nn.Module, int], tuple[Metrics, dict[str, Any]]]
    describe: Callable[[Metrics], str]
    amp: contextlib.AbstractContextManager
    save: Callable[..., Path] = save_checkpoint
    tokenizer_file: Path | None = None
    tokens_per_step: int = 0
    flops_per_step: float = 0.0
    peak_flops: float | None = None
    state: Callable[[], dict[str, Any]] | None = None
    step_metrics: Callable[[], dict[str, torch.Tensor]] | None = None


@dataclass
class RunResult:
    """How a run ended: ``step`` reached, ``interrupted`` (Ctrl-C), the last ``checkpoint``,
    ``tokens_per_s`` and ``mfu`` of the last logging window, ``val`` (the last validation)."""

    step: int
    interrupted: bool
    checkpoint: Path
    tokens_per_s: float
    mfu: float | None
    val: Metrics | None


class _Window:
    """Loss and throughput over the steps since the last log line."""

    def __init__(self) -> None:
        self.t_last, self.tokens, self.loss_sum, self.loss_n = time.perf_counter(), 0, 0.0, 0
        self.tokens_per_s = 0.0
        self.extra: dict[str, torch.Tensor] = {}  # sums of the recipe's step metrics

    def add(self, loss: float, extra: dict[str, torch.Tensor]) -> None:
        """Count one applied step."""
        self.loss_sum += loss
        self.loss_n += 1
        for k, v in extra.items():
            v = v.detach().float()
            self.extra[k] = self.extra[k] + v if k in self.extra else v

    def close(self, now: float) -> None:
        self.t_last, self.tokens, self.loss_sum, self.loss_n = now, 0, 0.0, 0
        self.extra = {}


class Engine:
    """Resumes, wraps and compiles a recipe's model and trains it (see the module docstring).

    Args:
        recipe: what to train.
        env: this process's place among the training processes (:func:`attnlab.train.distributed.setup`).
        ckpt: the checkpoint to resume from (``None``: a new run).
        log: one-line messages (pass :func:`quiet` on ranks other than 0).
        progress: show a progress bar.
    """

    def __init__(self, recipe: Recipe, env: DistEnv, *, ckpt: Checkpoint | None, log: Callable[[str], None],
                 progress: bool) -> None:
        self.recipe, self.env, self.log, self.progress = recipe, env, log, progress
        self.tc = tc = recipe.cfg.train
        self.run_dir = Path(tc.out_dir)
        self.model = model = recipe.model
        device = env.device
        tracker = Tracker(tc.log_to, self.run_dir, _plain(recipe.cfg), log) if env.is_main else None
        self.metrics = MetricsFile(self.run_dir / "metrics.jsonl", tracker)
        self.health = HealthMonitor(policy=tc.nonfinite, max_nonfinite=tc.max_nonfinite, spike_factor=tc.spike_factor)
        self.start_step = 0
        self.resumed: dict[str, Any] = {}
        """The recipe's :attr:`Recipe.state` from the checkpoint resumed from (empty for a new run)."""
        state = None
        if ckpt is not None:
            check_same_optimizer(ckpt.config.train, tc, self.run_dir)
            changes = resume_changes(ckpt.config.train, tc)
            if changes:
                log(changes)
            state = ckpt.training_state()
            if not is_dist_checkpoint(ckpt.path):
                load_weights(model, ckpt.weights, source=f"checkpoint '{ckpt.path}'")
                if env.mode == "fsdp":  # a single-process optimizer state, to be sharded by name
                    plain = build_optimizer(model, tc, device.type)
                    plain.load_state_dict(state["optimizer"])
                    state["optimizer"] = optimizer_state_by_name(model, torch_optimizers(plain))
        if tc.activation_checkpointing:
            enable_activation_checkpointing(model)
        self.wrapped = wrapped = wrap(model, env)
        self.optimizer = build_optimizer(model, tc, device.type)
        if ckpt is not None and state is not None:
            self._restore(ckpt, state)
        step_model = torch.compile(wrapped) if tc.compile else wrapped
        self.eval_model = model if env.mode == "ddp" else step_model  # DDP: the replica itself, no gradient hooks
        # One process: compile the model and its loss as one graph, so the cross-entropy fuses with the
        # LM head (nanoGPT's compiled forward includes its loss too); under DDP/FSDP only the model.
        train_loss = functools.partial(recipe.loss, step_model)
        if tc.compile and not env.distributed:
            train_loss = torch.compile(functools.partial(recipe.loss, wrapped))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.train_step = TrainStep(tc, env, self.optimizer, wrapped, self.params, train_loss, recipe.micro_batch,
                                    recipe.amp, self.health)

    def _restore(self, ckpt: Checkpoint, state: dict[str, Any]) -> None:
        env, device = self.env, self.env.device
        if is_dist_checkpoint(ckpt.path):
            load_dist_state(ckpt.path, self.wrapped, torch_optimizers(self.optimizer))
        elif env.mode == "fsdp":
            load_optimizer_state_by_name(self.wrapped, torch_optimizers(self.optimizer), state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        rngs = state.get("rng_ranks") or [state["rng"]]
        if env.rank < len(rngs) and rngs[env.rank] is not None:
            set_rng_state(rngs[env.rank], device)
        self.health.load_state_dict(state.get("health"))
        self.resumed = dict(state.get("recipe") or {})
        self.start_step = int(state["step"])
        if env.is_main:
            self.metrics.truncate_after(self.start_step)
        self.log(f"resumed from {ckpt.path} at step {self.start_step}")

    # -- checkpoints and validation -----------------------------------------
    def checkpoint(self, step: int, rng: dict[str, torch.Tensor] | None = None) -> Path:
        """Save the run at ``step`` (a collective under DDP / FSDP: every process calls it)."""
        r, env = self.recipe, self.env
        st: dict[str, Any] = {"rng": rng or rng_state(env.device), "health": self.health.state_dict()}
        if r.state is not None:
            st["recipe"] = r.state()
        if env.distributed:
            return save_dist_checkpoint(self.run_dir, step, self.wrapped, torch_optimizers(self.optimizer), r.cfg, env,
                                        state=st, tokenizer_file=r.tokenizer_file)
        st["optimizer"] = self.optimizer.state_dict()
        return r.save(self.run_dir, step, self.model, r.cfg, state=st, tokenizer_file=r.tokenizer_file, log=self.log)

    def validate(self, step: int) -> Metrics:
        """The recipe's validation at ``step``, recorded in ``metrics.jsonl``."""
        res, record = self.recipe.validate(self.eval_model, step)
        if self.env.is_main:
            self.metrics.write(record)
        return res

    def _mfu(self, tokens_per_s: float) -> float | None:
        r = self.recipe
        if not (r.peak_flops and r.tokens_per_step):
            return None
        return r.flops_per_step * tokens_per_s / r.tokens_per_step / (r.peak_flops * self.env.world_size)

    # -- the run --------------------------------------------------------------
    def run(self) -> RunResult:
        """Train from :attr:`start_step` to ``train.max_steps`` (or a stop request), then validate.

        The trackers of ``train.log_to`` open now and close when the run ends, however it ends.

        Raises:
            NonFiniteError: the loss or gradients went NaN/inf as ``train.nonfinite`` does not
                tolerate; the last good state was saved first.
        """
        with self.metrics:
            return self._run()

    def _run(self) -> RunResult:
        tc, env, r = self.tc, self.env, self.recipe
        say = tqdm.write if env.is_main else quiet
        self.model.train()
        step = start_step = self.start_step
        last_val: Metrics | None = None
        interrupted = stop_now = False
        if tc.compile:
            prepare_compiled(self.model, r.loss, r.micro_batch(start_step, 0), r.amp, self.log)
        if r.step_metrics is not None:
            r.step_metrics()  # forget what warm-up calls of the loss recorded
        good_step, good_rng = start_step, rng_state(env.device)
        bar = tqdm(total=tc.max_steps, initial=start_step, disable=not self.progress, dynamic_ncols=True, unit="step")
        window = _Window()
        with StopFlag() as stop, no_silent_recompile(tc.compile, lambda: self.checkpoint(good_step, good_rng)):
            while step < tc.max_steps:
                if stop_now:
                    interrupted = True
                    break
                log_step = (step + 1) % tc.log_every == 0 or step + 1 == tc.max_steps
                out = self.train_step(step, stop.requested, measure=log_step)
                stop_now = out.stop_requested
                extra = r.step_metrics() if r.step_metrics is not None else {}
                if out.verdict.action == "step":
                    window.add(out.loss, extra)
                step += 1
                window.tokens += r.tokens_per_step
                bar.update(1)
                self._health_event(step, out, say)
                if out.verdict.action == "stop":
                    bar.close()
                    path = self.checkpoint(good_step, good_rng)
                    raise NonFiniteError(
                        f"{out.verdict.message}; the last good state (step {good_step}) is saved in {path}; "
                        "lower train.lr or set train.nonfinite=skip, then continue with --resume"
                    )
                if out.verdict.action == "step":
                    good_step, good_rng = step, rng_state(env.device)
                if log_step:
                    self._log_window(step, out, window, bar)
                if tc.eval_every and step % tc.eval_every == 0 and step < tc.max_steps:
                    last_val = self.validate(step)
                    say(f"step {step}: {r.describe(last_val)}")
                if tc.ckpt_every and step % tc.ckpt_every == 0 and step < tc.max_steps:
                    self.checkpoint(step)
        bar.close()
        return self._finish(step, interrupted, window, last_val)

    def _health_event(self, step: int, out: StepOutcome, say: Callable[[str], None]) -> None:
        verdict = out.verdict
        if not verdict.message:
            return
        if verdict.action != "stop":  # a stop says it in its error
            say(verdict.message)
        if self.env.is_main:
            self.metrics.write({"step": step, "event": "nonfinite" if verdict.nonfinite else "spike",
                                "step_loss": out.loss if math.isfinite(out.loss) else str(out.loss),
                                "nonfinite_total": self.health.nonfinite_total, "spikes": self.health.spikes})

    def _log_window(self, step: int, out: StepOutcome, window: _Window, bar: Any) -> None:
        device = self.env.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        record: dict[str, Any] = {"step": step, "lr": out.lr}
        if self.recipe.tokens_per_step:
            window.tokens_per_s = window.tokens / max(now - window.t_last, 1e-9)
            record["tokens_per_s"] = window.tokens_per_s
        if math.isfinite(out.grad_norm):  # metrics.jsonl stays strict JSON
            record["grad_norm"] = out.grad_norm
        if window.loss_n:
            record["loss"] = window.loss_sum / window.loss_n
        names = sorted(window.extra)
        if names:  # the same names on every process: each applied the same steps
            sums = self.env.sum(torch.stack([window.extra[k] for k in names])).tolist()
            record.update({k: v / (window.loss_n * self.env.world_size) for k, v in zip(names, sums, strict=True)})
        if out.update_ratio is not None:
            record["update_ratio"] = out.update_ratio
        mfu = self._mfu(window.tokens_per_s)
        if mfu is not None:
            record["mfu"] = mfu
        if self.env.is_main:
            self.metrics.write(record)
        if window.loss_n:
            shown = {"loss": f"{record['loss']:.3f}"}
            if self.recipe.tokens_per_step:
                shown["tok_s"] = f"{window.tokens_per_s:,.0f}"
            if "mfu" in record:  # a GPU whose peak is known
                shown["mfu"] = f"{record['mfu']:.1%}"
            shown.update({k: f"{record[k]:.3g}" for k in names})
            bar.set_postfix(shown, refresh=False)
        window.close(now)

    def _finish(self, step: int, interrupted: bool, window: _Window, last_val: Metrics | None) -> RunResult:
        if step > self.start_step or interrupted:
            ckpt_path = self.checkpoint(step)
        else:
            ckpt_path = self.run_dir / "checkpoints"
        if interrupted:
            self.log(f"stopped at step {step}; checkpoint saved to {ckpt_path}; continue with --resume")
        else:
            last_val = self.validate(step)
        health = self.health
        if health.nonfinite_total or health.spikes:
            self.log(f"health: {health.nonfinite_total} non-finite steps skipped, {health.spikes} loss spikes "
                     "(see metrics.jsonl)")
        return RunResult(step=step, interrupted=interrupted, checkpoint=ckpt_path, tokens_per_s=window.tokens_per_s,
                         mfu=self._mfu(window.tokens_per_s), val=last_val)
