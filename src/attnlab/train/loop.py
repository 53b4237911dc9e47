"""Pretraining, a recipe on :mod:`attnlab.train.engine`: AdamW or Muon, warmup + cosine,
clipping, accumulation, AMP, periodic validation, atomic checkpoints, exact resume, health
checks, and DDP / FSDP2 over several processes (``torchrun``, see :mod:`attnlab.train.distributed`).

This module supplies the model, the objective's micro-batches and its validation; the engine
owns the loop.

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

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attnlab.config import Config
from attnlab.data import TokenData, prepare
from attnlab.data.dataset import seeded_generator
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.models import build
from attnlab.train.checkpoint import check_writable, has_checkpoint, load_checkpoint, save_checkpoint
from attnlab.train.distributed import DistEnv, rank_seed, setup
from attnlab.train.engine import Engine, Recipe, quiet
from attnlab.train.metrics import flops_per_token, peak_flops, plot_losses
from attnlab.train.objectives import Objective, ObjectiveBatch, build_objective, objective_name
from attnlab.train.run_state import autocast_for, resolve_device, run_precision
from attnlab.train.tracking import require as require_trackers

__all__ = ["autocast_for", "resolve_device", "train"]


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
    data: TokenData | None = None,
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
        Summary with ``objective``, ``precision`` (``"bfloat16"`` or ``"float32"``, see
        :func:`attnlab.precision.resolve_precision`), final ``val_loss`` (the objective's NLL per predicted token,
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
    require_trackers(tc.log_to)  # a missing tensorboard / wandb fails now, not after preparing the data
    device = resolve_device(tc.device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    env = setup(tc, device.type)
    try:
        return _train(cfg, env, resume=resume, progress=progress and env.is_main,
                      data=data or _prepare_data(cfg, env, progress and env.is_main),
                      log=log if env.is_main else quiet)
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
            f"train.seq_len={seq_len} exceeds model.block_size={cfg.model.block_size}; "
            "lower seq_len or raise block_size"
        )

    torch.manual_seed(tc.seed)
    model = build(cfg).to(device)
    n_params = model.num_params()
    if env.rank > 0:
        torch.manual_seed(rank_seed(tc.seed, env.rank))  # same init everywhere, own dropout masks
    ckpt = None
    if resume:
        ckpt = load_checkpoint(run_dir, log=log)
        _check_same_model(ckpt.config, cfg, run_dir)
    precision = run_precision(device, tc.dtype, log)
    amp = precision.autocast(device)
    rows = env.shard(tc.batch_size)

    def micro_batch(step: int, micro: int) -> ObjectiveBatch:
        x, y = data.get_batch("train", step, tc.batch_size, seq_len, tc.seed, micro)  # (B, T) each
        rng = seeded_generator(tc.seed, "objective", step, micro)  # masks / spans of this micro-batch
        batch = objective.make_batch(x, y, rng)
        return (_rows(batch, rows) if env.world_size > 1 else batch).to(device)  # (B / N, T)

    def validate(eval_model: torch.nn.Module, step: int) -> tuple[dict[str, float], dict[str, Any]]:
        res = objective.evaluate(eval_model, data, split="val", batch_size=tc.batch_size, seq_len=seq_len,
                                 max_batches=tc.eval_batches, device=device, autocast=amp, seed=tc.seed)
        record = {"step": step, "val_loss": res["loss"], "objective": objective.name, "precision": precision.name}
        if "ppl" in res:  # perplexity and bits/byte are defined for next-token loss only
            record.update(val_ppl=res["ppl"], val_bpb=res["bpb"])
        return res, record

    tokens_per_step = tc.batch_size * seq_len * tc.grad_accum  # global
    tok_file = run_dir / "tokenizer.json"
    recipe = Recipe(cfg=cfg, model=model, loss=objective.loss, micro_batch=micro_batch, validate=validate,
                    describe=lambda res: _describe(res, objective.name), amp=amp, save=save_checkpoint,
                    tokenizer_file=tok_file, tokens_per_step=tokens_per_step,
                    flops_per_step=flops_per_token(cfg.model, seq_len, n_params) * tokens_per_step,
                    peak_flops=peak_flops(device))
    engine = Engine(recipe, env, ckpt=ckpt, log=log, progress=progress)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        objective.tokenizer.save(tok_file)  # with the objective's extra tokens
    env.barrier()

    entropy = data.unigram_entropy("train")
    par = f" | {env.mode} over {env.world_size} processes" if env.distributed else ""
    log(
        f"model: {n_params:,} parameters | data: {len(data.train):,} train / {len(data.val):,} val tokens, "
        f"vocab {vocab} | objective {objective.name} | {tokens_per_step:,} tokens/step on {device.type}{par}"
    )
    result = engine.run()
    if env.is_main:
        # The unigram entropy is a no-context baseline for predicting a text token (clm, mlm);
        # span targets also hold sentinels, so it does not apply there.
        plot_losses(engine.metrics.read(), run_dir / "loss.png", title=f"{run_dir.name}: {n_params / 1e6:.2f}M params",
                    baseline=entropy if objective.name in ("clm", "mlm") else None,
                    ylabel=f"{objective.name} loss (nats / predicted token)")
    summary = {
        "objective": objective.name,
        "precision": precision.name,
        "step": result.step,
        "interrupted": result.interrupted,
        "checkpoint": str(result.checkpoint),
        "loss_curve": str(run_dir / "loss.png"),
        "tokens_per_s": result.tokens_per_s,
        "mfu": result.mfu,
        "unigram_entropy": entropy,
        "unigram_bpb": entropy / math.log(2) / data.bytes_per_token("train"),
        "nonfinite_steps": engine.health.nonfinite_total,
        "loss_spikes": engine.health.spikes,
    }
    last_val = result.val
    if last_val:
        summary["val_loss"] = last_val["loss"]
        if "ppl" in last_val:
            summary.update(val_ppl=last_val["ppl"], val_bpb=last_val["bpb"])
    return summary
