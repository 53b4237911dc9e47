"""The pretraining loop: AdamW or Muon, warmup + cosine, clipping, accumulation, AMP,
periodic validation, atomic checkpoints, exact resume, health checks, and DDP / FSDP2
over several processes (``torchrun``, see :mod:`attnlab.train.distributed`).

Every architecture trains with its objective (:mod:`attnlab.train.objectives`): next-token
loss for decoders, masked LM for encoders, span corruption for encoder–decoders
(``train.objective``, ``auto`` by ``model.arch``).

Exactness: the batch of step ``s`` and its masks / corrupted spans are pure functions of
(seed, s), the learning rate is a pure function of ``s``, and a checkpoint stores weights,
optimizer moments and RNG states (dropout). A run stopped at any point and resumed from its
last checkpoint therefore computes the same losses as one that never stopped. With N
processes each takes its rows of the same global batch, so the losses match a single
process up to floating-point reduction order, and a run may resume on another N.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from attnlab.config import Config
from attnlab.data import TokenData, prepare
from attnlab.data.dataset import seeded_generator
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.models import build
from attnlab.train.checkpoint import check_writable, has_checkpoint, load_checkpoint, load_weights, save_checkpoint
from attnlab.train.compiled import no_silent_recompile, prepare_compiled
from attnlab.train.checkpoint.dist import (
    is_dist_checkpoint,
    load_dist_state,
    load_optimizer_state_by_name,
    optimizer_state_by_name,
    save_dist_checkpoint,
)
from attnlab.train.distributed import (
    DistEnv,
    enable_activation_checkpointing,
    gradient_sync,
    rank_seed,
    setup,
    wrap,
)
from attnlab.train.health import HealthMonitor, NonFiniteError, clip_gradients, snapshot, update_ratio
from attnlab.train.metrics import MetricsFile, flops_per_token, peak_flops, plot_losses
from attnlab.train.objectives import Objective, ObjectiveBatch, build_objective, objective_name
from attnlab.train.optim import build_optimizer, set_lr, torch_optimizers
from attnlab.train.schedule import lr_at


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → cuda when available, else cpu; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AttnlabError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(name)


def autocast_for(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for ``"auto"``; explicit ``"bfloat16"`` anywhere; else nothing."""
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _StopFlag:
    """First Ctrl-C / SIGTERM asks the loop to save and stop at the next step boundary;
    a second one interrupts at once (the last checkpoint on disk stays intact).

    Under torchrun a Ctrl-C reaches each process twice (from the terminal, then forwarded
    by the launcher), so there a second signal within a second counts as the same one.
    """

    def __init__(self) -> None:
        self.requested = False
        self._since = 0.0
        self._grace = 1.0 if "TORCHELASTIC_RUN_ID" in os.environ else 0.0
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and time.monotonic() - self._since >= self._grace:
            raise KeyboardInterrupt
        if not self.requested:
            self._since = time.monotonic()
        self.requested = True

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_same_model(saved: Config, current: Config, run_dir: Path) -> None:
    if saved.model != current.model:
        diffs = [k for k, v in vars(current.model).items() if getattr(saved.model, k) != v]
        raise CheckpointError(
            f"the checkpoint in '{run_dir}' was trained with a different model (model.{diffs[0]}: "
            f"{getattr(saved.model, diffs[0])!r} there, {getattr(current.model, diffs[0])!r} now); "
            "resume with the same model config or choose another train.out_dir"
        )


def _set_vocab_size(cfg: Config, objective: Objective) -> int:
    """Give the model room for the tokenizer plus the objective's extra tokens ([MASK], sentinels)."""
    vocab = objective.tokenizer.vocab_size
    extra = len(objective.extra_tokens())
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab
    elif cfg.model.vocab_size < vocab:
        extras = f" ({extra} of them added by the {objective.name} objective)" if extra else ""
        raise AttnlabError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {vocab} tokens{extras}; "
            "set model.vocab_size=0 to use the tokenizer's size"
        )
    return vocab


def _describe(res: dict[str, float], name: str) -> str:
    if "ppl" in res:
        return f"val loss {res['loss']:.4f}, ppl {res['ppl']:.2f}, {res['bpb']:.3f} bits/byte"
    return f"val {name} loss {res['loss']:.4f}"


def _quiet(message: str) -> None:
    pass


def _rows(batch: ObjectiveBatch, rows: slice) -> ObjectiveBatch:
    """This process's rows of a global (micro-)batch."""
    return batch.apply(lambda t: t[rows])  # inputs, labels and keyword inputs (document ids) alike


def _prepare_data(cfg: Config, env: DistEnv, progress: bool) -> TokenData:
    """Tokenize once: rank 0 fills the cache, then the others read it."""
    data = prepare(cfg.data, progress=progress) if env.is_main else None
    env.barrier()
    return data or prepare(cfg.data, progress=False)


def train(
    cfg: Config,
    *,
    resume: bool = False,
    progress: bool = True,
    data: Optional[TokenData] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pretrain a model as ``cfg`` says, with the objective of its architecture.

    Run it in one process, or in each of N processes started by ``torchrun`` (``train.parallel``
    picks DDP or FSDP2; only rank 0 logs and writes metrics).

    Args:
        cfg: the run config. ``model.vocab_size == 0`` takes the tokenizer's size plus the
            objective's extra tokens (``<|mask|>`` for mlm, 100 sentinels for span).
        resume: continue from the latest checkpoint in ``train.out_dir``.
        progress: show a progress bar.
        data: pre-tokenized data (otherwise prepared from ``cfg.data``).
        log: where one-line messages go.

    Returns:
        Summary with ``objective``, final ``val_loss`` (the objective's NLL per predicted token,
        without label smoothing; plus ``val_ppl`` and ``val_bpb`` for clm only), ``unigram_entropy``,
        ``step``, ``checkpoint`` path, ``tokens_per_s`` (the last logging window), ``mfu`` (model
        FLOPs utilisation, None where the device's peak is unknown, e.g. CPUs), ``nonfinite_steps``,
        ``loss_spikes`` and ``interrupted``.

    Raises:
        AttnlabError: bad config for the data, an objective that does not fit the
            architecture, existing run without ``resume``, etc.
        NonFiniteError: the loss or gradients went NaN/inf as ``train.nonfinite`` does not
            tolerate; the last good state was saved first.
    """
    tc = cfg.train
    objective_name(cfg)  # a mismatched objective fails before any work
    run_dir = Path(tc.out_dir)
    if has_checkpoint(run_dir) and not resume:
        raise AttnlabError(
            f"'{run_dir}' already holds a training run; pass --resume to continue it, "
            "or set train.out_dir to a new folder"
        )
    if resume and not has_checkpoint(run_dir):
        raise AttnlabError(f"nothing to resume in '{run_dir}' (no checkpoints); drop --resume to start a new run")
    check_writable(run_dir)  # a read-only or misplaced out_dir fails now, not at the first checkpoint
    device = resolve_device(tc.device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    env = setup(tc, device.type)
    try:
        return _train(cfg, env, resume=resume, progress=progress and env.is_main,
                      data=data or _prepare_data(cfg, env, progress and env.is_main),
                      log=log if env.is_main else _quiet)
    finally:
        env.close()


def _train(cfg: Config, env: DistEnv, *, resume: bool, progress: bool, data: TokenData,
           log: Callable[[str], None]) -> dict[str, Any]:
    tc = cfg.train
    run_dir = Path(tc.out_dir)
    device = env.device
    objective = build_objective(cfg, data.tokenizer)
    vocab = _set_vocab_size(cfg, objective)
    seq_len = tc.seq_len or cfg.model.block_size
    if seq_len > cfg.model.block_size:
        raise AttnlabError(
            f"train.seq_len={seq_len} exceeds model.block_size={cfg.model.block_size}; lower seq_len or raise block_size"
        )

    torch.manual_seed(tc.seed)
    model = build(cfg).to(device)
    n_params = model.num_params()
    if env.rank > 0:
        torch.manual_seed(rank_seed(tc.seed, env.rank))  # same init everywhere, own dropout masks
    start_step, state, ckpt = 0, None, None
    metrics = MetricsFile(run_dir / "metrics.jsonl")
    health = HealthMonitor(policy=tc.nonfinite, max_nonfinite=tc.max_nonfinite, spike_factor=tc.spike_factor)
    if resume:
        ckpt = load_checkpoint(run_dir, log=log)
        _check_same_model(ckpt.config, cfg, run_dir)
        if ckpt.config.train.optimizer != tc.optimizer:
            raise CheckpointError(
                f"the checkpoint in '{run_dir}' was trained with train.optimizer={ckpt.config.train.optimizer}; "
                "resume with the same optimizer or choose another train.out_dir"
            )
        state = ckpt.training_state()
        if not is_dist_checkpoint(ckpt.path):
            load_weights(model, ckpt.weights, source=f"checkpoint '{ckpt.path}'")
            if env.mode == "fsdp":  # a single-process optimizer state, to be sharded by name
                plain = build_optimizer(model, tc, device.type)
                plain.load_state_dict(state["optimizer"])
                state["optimizer"] = optimizer_state_by_name(model, torch_optimizers(plain))
    if tc.activation_checkpointing:
        enable_activation_checkpointing(model)
    wrapped = wrap(model, env)
    optimizer = build_optimizer(model, tc, device.type)
    if ckpt is not None and state is not None:
        if is_dist_checkpoint(ckpt.path):
            load_dist_state(ckpt.path, wrapped, torch_optimizers(optimizer))
        elif env.mode == "fsdp":
            load_optimizer_state_by_name(wrapped, torch_optimizers(optimizer), state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        rngs = state.get("rng_ranks") or [state["rng"]]
        if env.rank < len(rngs) and rngs[env.rank] is not None:
            _set_rng_state(rngs[env.rank], device)
        health.load_state_dict(state.get("health"))
        start_step = int(state["step"])
        if env.is_main:
            metrics.truncate_after(start_step)
        log(f"resumed from {ckpt.path} at step {start_step}")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
    tok_file = run_dir / "tokenizer.json"
    if env.is_main:
        objective.tokenizer.save(tok_file)  # with the objective's extra tokens
    env.barrier()

    step_model = torch.compile(wrapped) if tc.compile else wrapped
    eval_model = model if env.mode == "ddp" else step_model  # DDP: the replica itself, no gradient hooks
    # One process: compile the model and its loss as one graph, so the cross-entropy fuses with the
    # LM head (nanoGPT's compiled forward includes its loss too); under DDP/FSDP only the model.
    train_loss = functools.partial(objective.loss, step_model)
    if tc.compile and not env.distributed:
        train_loss = torch.compile(functools.partial(objective.loss, wrapped))
    amp = autocast_for(device, tc.dtype)
    tokens_per_step = tc.batch_size * seq_len * tc.grad_accum  # global
    flops_step = flops_per_token(cfg.model, seq_len, n_params) * tokens_per_step
    peak = peak_flops(device)
    params = [p for p in model.parameters() if p.requires_grad]
    say = tqdm.write if env.is_main else _quiet

    def checkpoint(step: int, rng: Optional[dict[str, torch.Tensor]] = None) -> Path:
        st: dict[str, Any] = {"rng": rng or _rng_state(device), "health": health.state_dict()}
        if env.distributed:
            return save_dist_checkpoint(run_dir, step, wrapped, torch_optimizers(optimizer), cfg, env,
                                        state=st, tokenizer_file=tok_file)
        st["optimizer"] = optimizer.state_dict()
        return save_checkpoint(run_dir, step, model, cfg, state=st, tokenizer_file=tok_file, log=log)

    def validate(step: int) -> dict[str, float]:
        res = objective.evaluate(eval_model, data, split="val", batch_size=tc.batch_size, seq_len=seq_len,
                                 max_batches=tc.eval_batches, device=device, autocast=amp, seed=tc.seed)
        record = {"step": step, "val_loss": res["loss"], "objective": objective.name}
        if "ppl" in res:  # perplexity and bits/byte are defined for next-token loss only
            record.update(val_ppl=res["ppl"], val_bpb=res["bpb"])
        if env.is_main:
            metrics.write(record)
        return res

    entropy = data.unigram_entropy("train")
    par = f" | {env.mode} over {env.world_size} processes" if env.distributed else ""
    log(
        f"model: {n_params:,} parameters | data: {len(data.train):,} train / {len(data.val):,} val tokens, "
        f"vocab {vocab} | objective {objective.name} | {tokens_per_step:,} tokens/step on {device.type}{par}"
    )
    model.train()
    step = start_step
    last_val: Optional[dict[str, float]] = None
    interrupted = stop_now = False
    rows = env.shard(tc.batch_size)

    def micro_batch(step: int, micro: int) -> ObjectiveBatch:
        x, y = data.get_batch("train", step, tc.batch_size, seq_len, tc.seed, micro)  # (B, T) each
        rng = seeded_generator(tc.seed, "objective", step, micro)  # masks / spans of this micro-batch
        batch = objective.make_batch(x, y, rng)
        return (_rows(batch, rows) if env.world_size > 1 else batch).to(device)  # (B / N, T)

    if tc.compile:
        prepare_compiled(model, objective, micro_batch(start_step, 0), amp, log)
    inject = set(tc.inject_nan_steps)
    good_step, good_rng = start_step, _rng_state(device)
    bar = tqdm(total=tc.max_steps, initial=start_step, disable=not progress, dynamic_ncols=True, unit="step")
    t_last, tokens_since, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
    tokens_per_s = 0.0
    with _StopFlag() as stop, no_silent_recompile(tc.compile, lambda: checkpoint(good_step, good_rng)):
        while step < tc.max_steps:
            if stop_now:
                interrupted = True
                break
            lr = lr_at(step, tc)
            set_lr(optimizer, lr, tc.lr)
            step_loss = torch.zeros((), device=device)
            for micro in range(tc.grad_accum):
                batch = micro_batch(step, micro)
                with gradient_sync(wrapped, micro == tc.grad_accum - 1):
                    with amp:
                        loss = train_loss(batch) / tc.grad_accum
                    if step + 1 in inject and micro == 0:  # testing aid (train.inject_nan_steps)
                        loss = loss * float("nan")
                    loss.backward()
                step_loss += loss.detach()
            grad_norm = clip_gradients(params, tc.grad_clip)
            # One synchronization per step: the global loss, the norm and any stop request.
            flags = env.sum(torch.stack([step_loss.float() / env.world_size, grad_norm.float() / env.world_size,
                                         torch.tensor(float(stop.requested), device=device)]))
            loss_value, norm_value, stops = flags.tolist()
            stop_now = stops > 0
            verdict = health.check(step + 1, loss_value, norm_value)
            log_step = (step + 1) % tc.log_every == 0 or step + 1 == tc.max_steps
            ratio = None
            if verdict.action == "step":
                before = snapshot(params) if log_step else None
                optimizer.step()
                if before is not None:
                    ratio = update_ratio(params, before)
                loss_sum += loss_value
                loss_n += 1
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_since += tokens_per_step
            bar.update(1)
            if verdict.message:
                if verdict.action != "stop":  # a stop says it in its error
                    say(verdict.message)
                if env.is_main:
                    metrics.write({"step": step, "event": "nonfinite" if verdict.nonfinite else "spike",
                                   "step_loss": loss_value if math.isfinite(loss_value) else str(loss_value),
                                   "nonfinite_total": health.nonfinite_total, "spikes": health.spikes})
            if verdict.action == "stop":
                bar.close()
                path = checkpoint(good_step, good_rng)
                raise NonFiniteError(
                    f"{verdict.message}; the last good state (step {good_step}) is saved in {path}; "
                    "lower train.lr or set train.nonfinite=skip, then continue with --resume"
                )
            if verdict.action == "step":
                good_step, good_rng = step, _rng_state(device)

            if log_step:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                tokens_per_s = tokens_since / max(now - t_last, 1e-9)
                record: dict[str, Any] = {"step": step, "lr": lr, "tokens_per_s": tokens_per_s}
                if math.isfinite(norm_value):  # metrics.jsonl stays strict JSON
                    record["grad_norm"] = norm_value
                if loss_n:
                    record["loss"] = loss_sum / loss_n
                if ratio is not None:
                    record["update_ratio"] = ratio
                if peak:
                    record["mfu"] = flops_step * tokens_per_s / tokens_per_step / (peak * env.world_size)
                if env.is_main:
                    metrics.write(record)
                if loss_n:
                    shown = {"loss": f"{record['loss']:.3f}", "tok_s": f"{tokens_per_s:,.0f}"}
                    if "mfu" in record:  # a GPU whose peak is known
                        shown["mfu"] = f"{record['mfu']:.1%}"
                    bar.set_postfix(shown, refresh=False)
                t_last, tokens_since, loss_sum, loss_n = now, 0, 0.0, 0
            if tc.eval_every and step % tc.eval_every == 0 and step < tc.max_steps:
                last_val = validate(step)
                say(f"step {step}: {_describe(last_val, objective.name)}")
            if tc.ckpt_every and step % tc.ckpt_every == 0 and step < tc.max_steps:
                checkpoint(step)
    bar.close()

    if step > start_step or interrupted:
        ckpt_path = checkpoint(step)
    else:
        ckpt_path = run_dir / "checkpoints"
    if interrupted:
        log(f"stopped at step {step}; checkpoint saved to {ckpt_path}; continue with --resume")
    else:
        last_val = validate(step)
    if health.nonfinite_total or health.spikes:
        log(f"health: {health.nonfinite_total} non-finite steps skipped, {health.spikes} loss spikes (see metrics.jsonl)")
    if env.is_main:
        # The unigram entropy is a no-context baseline for predicting a text token (clm, mlm);
        # span targets also hold sentinels, so it does not apply there.
        plot_losses(metrics.read(), run_dir / "loss.png", title=f"{run_dir.name}: {n_params / 1e6:.2f}M params",
                    baseline=entropy if objective.name in ("clm", "mlm") else None,
                    ylabel=f"{objective.name} loss (nats / predicted token)")
    summary = {
        "objective": objective.name,
        "step": step,
        "interrupted": interrupted,
        "checkpoint": str(ckpt_path),
        "loss_curve": str(run_dir / "loss.png"),
        "tokens_per_s": tokens_per_s,
        "mfu": flops_step * tokens_per_s / tokens_per_step / (peak * env.world_size) if peak else None,
        "unigram_entropy": entropy,
        "unigram_bpb": entropy / math.log(2) / data.bytes_per_token("train"),
        "nonfinite_steps": health.nonfinite_total,
        "loss_spikes": health.spikes,
    }
    if last_val:
        summary["val_loss"] = last_val["loss"]
        if "ppl" in last_val:
            summary.update(val_ppl=last_val["ppl"], val_bpb=last_val["bpb"])
    return summary
