"""Run a fine-tuning recipe: build, train, evaluate, keep the best model.

    from attnlab.finetune import load_finetune_config, run
    result = run(load_finetune_config("configs/finetune/sentiment-minilm.yaml", "classify"))
    result["test"]["accuracy"]

A finished run folder (``train.out_dir``) holds ``model/`` (the best model on the
validation metric: weights, tokenizer, recipe, task state, metrics; written atomically),
``metrics.jsonl`` (loss and validation metrics over steps) and ``results.json``.
:func:`load_finetuned` rebuilds the task, model and tokenizer from ``model/``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, CheckpointError
from attnlab.finetune.lora import count_parameters, inject_lora
from attnlab.finetune.recipe import FinetuneConfig, Task, finetune_config_from_dict, seeded_order, task_class
from attnlab.train.checkpoint import fsync_file, load_weights, sha256_file, weights_state_dict
from attnlab.train.loop import autocast_for, resolve_device
from attnlab.train.metrics import MetricsFile
from attnlab.train.optim import build_optimizer
from attnlab.train.schedule import lr_at

MODEL_DIR = "model"


BUCKET_POOL = 50
"""Batches per pool sorted by length when a task defines :meth:`Task.length`."""


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: Optional[list[int]] = None) -> list[list[int]]:
    """The batches (feature indices) of one epoch, a pure function of the arguments.

    Without ``lengths``: consecutive slices of the epoch's seeded permutation. With
    ``lengths``: each pool of ``BUCKET_POOL`` batches of that permutation is sorted by length
    before it is cut, and the batches are shuffled, so a batch holds features of similar
    length (little padding) and its place in the epoch stays random.
    """
    order = seeded_order(n, seed, epoch)
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    pool = batch_size * BUCKET_POOL
    batches = []
    for start in range(0, n, pool):
        chunk = sorted(order[start:start + pool], key=lambda j: lengths[j])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in seeded_order(len(batches), seed + 1, epoch)]


def _batches(task: Task, feats: list[Any], batch_size: int, seed: int):
    """Endless batches over ``feats``, epoch after epoch (see :func:`epoch_batches`)."""
    lengths = [task.length(f) for f in feats]
    bucketed = None if any(n is None for n in lengths) else lengths
    epoch = 0
    while True:
        for idx in epoch_batches(len(feats), batch_size, seed, epoch, bucketed):
            yield task.collate([feats[j] for j in idx])
        epoch += 1


def _better(new: float, old: float, higher_is_better: bool) -> bool:
    return new > old if higher_is_better else new < old


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


from attnlab.finetune.saved import save_finetuned, load_finetuned, _memory_report  # noqa: E402,F401,I001


def run(cfg: FinetuneConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says and report the metrics.

    Returns:
        ``{"task", "init", "lora", "val" (best validation metrics), "test" (final metrics of
        the best model), "best_step", "memory", "seconds" (training time), "model" (folder)}``,
        plus ``"val_start"`` (the init's validation metrics) for tasks with
        ``eval_at_start``; also written to ``results.json``.

    Raises:
        AttnlabError: an existing run folder, bad data, a model that does not fit the task.
    """
    tc = cfg.train
    out = Path(tc.out_dir)
    if (out / MODEL_DIR).exists() or (out / "results.json").exists():
        raise AttnlabError(f"'{out}' already holds a fine-tuning run; set train.out_dir to a new folder")
    device = resolve_device(tc.device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    task = task_class(cfg.task)(cfg)
    splits = task.splits()
    model, tok = task.build(splits["train"])
    if cfg.lora is not None:
        wrapped = inject_lora(model, cfg.lora, trainable_extra=task.head_modules)
        log(f"LoRA rank {cfg.lora.rank} on {len(wrapped)} layers")
    feats = task.features(splits["train"], tok)
    if not feats:
        raise AttnlabError(f"no training features from '{cfg.data.train}'; check the file and the task options")
    model.to(device)
    trainable, total = count_parameters(model)
    log(f"{cfg.task}: {len(splits['train']):,} train / {len(splits['val']):,} val / {len(splits['test']):,} test "
        f"examples | {trainable:,} trainable of {total:,} parameters | {device.type}")
    out.mkdir(parents=True, exist_ok=True)
    metrics = MetricsFile(out / "metrics.jsonl")
    optimizer = build_optimizer(model, tc, device.type)
    amp = autocast_for(device, tc.dtype)
    batches = _batches(task, feats, tc.batch_size, tc.seed)
    eval_every = tc.eval_every or tc.max_steps
    best: Optional[dict[str, float]] = None
    best_step = -1

    def validate(step: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad(), amp:
            res = task.evaluate(model, splits["val"], tok)
        model.train()
        metrics.write({"step": step, **{f"val_{k}": v for k, v in res.items()}})
        return res

    start = None
    if task.eval_at_start:
        start = validate(0)
        log("step 0: " + ", ".join(f"{k} {v:.4g}" for k, v in start.items()))
    t0 = time.time()
    bar = tqdm(total=tc.max_steps, disable=not progress, dynamic_ncols=True, unit="step")
    model.train()
    for step in range(tc.max_steps):
        lr = lr_at(step, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total_loss = 0.0
        for _ in range(tc.grad_accum):
            with amp:
                loss = task.loss(model, _to(next(batches), device)) / tc.grad_accum
            loss.backward()
            total_loss += loss.item()
        if not math.isfinite(total_loss):
            raise AttnlabError(f"loss became {total_loss} at step {step}; lower train.lr or check the data")
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % tc.log_every == 0 or step == tc.max_steps - 1:
            metrics.write({"step": step, "loss": total_loss, "lr": lr})
        bar.set_postfix(loss=f"{total_loss:.4f}")
        bar.update(1)
        if (step + 1) % eval_every == 0 or step == tc.max_steps - 1:
            res = validate(step + 1)
            (bar.write if progress else log)(f"step {step + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items()))
            if best is None or _better(res[task.metric], best[task.metric], task.higher_is_better):
                best, best_step = res, step + 1
                save_finetuned(out / MODEL_DIR, model, tok, cfg, task.state, {"step": best_step, "val": best})
    bar.close()
    seconds = time.time() - t0
    memory = _memory_report(model, device)
    _, best_model, _ = load_finetuned(out / MODEL_DIR, device)
    with torch.no_grad(), amp:
        test = task.evaluate(best_model, splits["test"], tok)
    result = {"task": cfg.task, "init": cfg.init, "lora": cfg.lora is not None, "best_step": best_step,
              "val": best, "test": test, "memory": memory, "seconds": round(seconds, 1),
              "model": str(out / MODEL_DIR)}
    if start is not None:
        result["val_start"] = start
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "results.json")
    log(f"{cfg.task}: test " + ", ".join(f"{k} {v:.4g}" for k, v in test.items()) + f" (best step {best_step})")
    return result
