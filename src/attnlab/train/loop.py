"""The pretraining loop: AdamW, warmup + cosine, clipping, accumulation, AMP,
periodic validation, atomic checkpoints and exact resume.

Every architecture trains with its objective (:mod:`attnlab.train.objectives`): next-token
loss for decoders, masked LM for encoders, span corruption for encoder–decoders
(``train.objective``, ``auto`` by ``model.arch``).

Exactness: the batch of step ``s`` and its masks / corrupted spans are pure functions of
(seed, s), the learning rate is a pure function of ``s``, and a checkpoint stores weights,
optimizer moments and RNG states (dropout). A run stopped at any point and resumed from its
last checkpoint therefore computes the same losses as one that never stopped.
"""

from __future__ import annotations

import contextlib
import math
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
from attnlab.train.checkpoint import has_checkpoint, load_checkpoint, load_weights, save_checkpoint
from attnlab.train.metrics import MetricsFile, flops_per_token, peak_flops, plot_losses
from attnlab.train.objectives import Objective, build_objective, objective_name
from attnlab.train.optim import build_optimizer
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
    a second one interrupts at once (the last checkpoint on disk stays intact)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
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


def train(
    cfg: Config,
    *,
    resume: bool = False,
    progress: bool = True,
    data: Optional[TokenData] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pretrain a model as ``cfg`` says, with the objective of its architecture.

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
        ``step``, ``checkpoint`` path, ``tokens_per_s`` and ``interrupted``.

    Raises:
        AttnlabError: bad config for the data, an objective that does not fit the
            architecture, existing run without ``resume``, etc.
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
    device = resolve_device(tc.device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)

    data = data or prepare(cfg.data, progress=progress)
    objective = build_objective(cfg, data.tokenizer)
    vocab = _set_vocab_size(cfg, objective)
    seq_len = tc.seq_len or cfg.model.block_size
    if seq_len > cfg.model.block_size:
        raise AttnlabError(
            f"train.seq_len={seq_len} exceeds model.block_size={cfg.model.block_size}; lower seq_len or raise block_size"
        )

    torch.manual_seed(tc.seed)
    model = build(cfg).to(device)
    optimizer = build_optimizer(model, tc, device.type)
    start_step = 0
    metrics = MetricsFile(run_dir / "metrics.jsonl")
    if resume:
        ckpt = load_checkpoint(run_dir)
        _check_same_model(ckpt.config, cfg, run_dir)
        load_weights(model, ckpt.weights, source=f"checkpoint '{ckpt.path}'")
        state = ckpt.training_state()
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], device)
        start_step = int(state["step"])
        metrics.truncate_after(start_step)
        log(f"resumed from {ckpt.path} at step {start_step}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    tok_file = objective.tokenizer.save(run_dir / "tokenizer.json")  # with the objective's extra tokens

    step_model = torch.compile(model) if tc.compile else model
    amp = autocast_for(device, tc.dtype)
    tokens_per_step = tc.batch_size * seq_len * tc.grad_accum
    n_params = model.num_params()
    flops_step = flops_per_token(cfg.model, seq_len, n_params) * tokens_per_step
    peak = peak_flops(device)

    def checkpoint(step: int) -> Path:
        state = {"optimizer": optimizer.state_dict(), "rng": _rng_state(device)}
        return save_checkpoint(run_dir, step, model, cfg, state=state, tokenizer_file=tok_file)

    def validate(step: int) -> dict[str, float]:
        res = objective.evaluate(step_model, data, split="val", batch_size=tc.batch_size, seq_len=seq_len,
                                 max_batches=tc.eval_batches, device=device, autocast=amp, seed=tc.seed)
        record = {"step": step, "val_loss": res["loss"], "objective": objective.name}
        if "ppl" in res:  # perplexity and bits/byte are defined for next-token loss only
            record.update(val_ppl=res["ppl"], val_bpb=res["bpb"])
        metrics.write(record)
        return res

    entropy = data.unigram_entropy("train")
    log(
        f"model: {n_params:,} parameters | data: {len(data.train):,} train / {len(data.val):,} val tokens, "
        f"vocab {vocab} | objective {objective.name} | {tokens_per_step:,} tokens/step on {device.type}"
    )
    model.train()
    step = start_step
    last_val: Optional[dict[str, float]] = None
    interrupted = False
    bar = tqdm(total=tc.max_steps, initial=start_step, disable=not progress, dynamic_ncols=True, unit="step")
    t_last, tokens_since, loss_sum, loss_n = time.perf_counter(), 0, torch.zeros((), device=device), 0
    tokens_per_s = 0.0
    with _StopFlag() as stop:
        while step < tc.max_steps:
            if stop.requested:
                interrupted = True
                break
            lr = lr_at(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(tc.grad_accum):
                x, y = data.get_batch("train", step, tc.batch_size, seq_len, tc.seed, micro)  # (B, T) each
                rng = seeded_generator(tc.seed, "objective", step, micro)  # masks / spans of this micro-batch
                batch = objective.make_batch(x, y, rng).to(device)
                with amp:
                    loss = objective.loss(step_model, batch) / tc.grad_accum
                loss.backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_n += 1
            tokens_since += tokens_per_step
            bar.update(1)

            if step % tc.log_every == 0 or step == tc.max_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                tokens_per_s = tokens_since / max(now - t_last, 1e-9)
                record = {"step": step, "loss": (loss_sum / loss_n).item(), "lr": lr,
                          "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s}
                if peak:
                    record["mfu"] = flops_step * tokens_per_s / tokens_per_step / peak
                metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                t_last, tokens_since, loss_sum, loss_n = now, 0, torch.zeros((), device=device), 0
            if tc.eval_every and step % tc.eval_every == 0 and step < tc.max_steps:
                last_val = validate(step)
                bar.write(f"step {step}: {_describe(last_val, objective.name)}")
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
    records = metrics.read()
    # The unigram entropy is a no-context baseline for predicting a text token (clm, mlm);
    # span targets also hold sentinels, so it does not apply there.
    plot_losses(records, run_dir / "loss.png", title=f"{run_dir.name}: {n_params / 1e6:.2f}M params",
                baseline=entropy if objective.name in ("clm", "mlm") else None,
                ylabel=f"{objective.name} loss (nats / predicted token)")
    summary = {
        "objective": objective.name,
        "step": step,
        "interrupted": interrupted,
        "checkpoint": str(ckpt_path),
        "loss_curve": str(run_dir / "loss.png"),
        "tokens_per_s": tokens_per_s,
        "unigram_entropy": entropy,
        "unigram_bpb": entropy / math.log(2) / data.bytes_per_token("train"),
    }
    if last_val:
        summary["val_loss"] = last_val["loss"]
        if "ppl" in last_val:
            summary.update(val_ppl=last_val["ppl"], val_bpb=last_val["bpb"])
    return summary
