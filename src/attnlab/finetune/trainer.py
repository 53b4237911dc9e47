"""Run a fine-tuning recipe: build, train, evaluate, keep the best model.

    from attnlab.finetune import load_finetune_config, run
    result = run(load_finetune_config("configs/finetune/sentiment-minilm.yaml", "classify"))
    result["test"]["accuracy"]

Fine-tuning is a recipe on :mod:`attnlab.train.engine`, the loop pretraining uses: the task
supplies the model, the batches (a pure function of the seed and the step, so a run resumes
exactly), the loss and the metric; the engine brings the schedule per parameter group (Muon at
``train.muon_lr``), ``train.nonfinite``, ``train.compile``, DDP (``train.parallel=ddp``),
Ctrl-C saving and ``--resume``.

A finished run folder (``train.out_dir``) holds ``model/`` (the best model on the
validation metric: weights, tokenizer, recipe, task state, metrics; written atomically),
``checkpoints/`` (to resume from), ``metrics.jsonl`` (loss and validation metrics over steps)
and ``results.json``. :func:`load_finetuned` rebuilds the task, model and tokenizer from ``model/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from attnlab.errors import AttnlabError, CheckpointError, ConfigError
from attnlab.finetune.lora import count_parameters, inject_lora
from attnlab.finetune.recipe import FinetuneConfig, Task, finetune_config_from_dict, seeded_order, task_class
from attnlab.finetune.saved import MODEL_DIR, _memory_report, load_finetuned, save_finetuned
from attnlab.train.checkpoint import has_checkpoint, load_checkpoint
from attnlab.train.distributed import DistEnv, rank_seed, setup
from attnlab.train.engine import Engine, Recipe, quiet
from attnlab.train.run_state import resolve_device, run_precision
from attnlab.train.tracking import require as require_trackers

BUCKET_POOL = 50
"""Batches per pool sorted by length when a task defines :meth:`Task.length`."""


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int,
                  lengths: list[int] | None = None) -> list[list[int]]:
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


class BatchStream:
    """The training batches of a run, epoch after epoch (see :func:`epoch_batches`), by index.

    Batch ``k`` is a pure function of (features, batch size, seed, k), so a resumed run sees
    the very batches of an uninterrupted one.
    """

    def __init__(self, task: Task, feats: list[Any], batch_size: int, seed: int) -> None:
        self.task, self.feats, self.batch_size, self.seed = task, feats, batch_size, seed
        lengths = [task.length(f) for f in feats]
        self.lengths = None if any(n is None for n in lengths) else lengths
        self._epoch, self._batches = 0, self._epoch_batches(0)
        self.per_epoch = len(self._batches)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(len(self.feats), self.batch_size, self.seed, epoch, self.lengths)

    def __getitem__(self, k: int) -> dict[str, Any]:
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return self.task.collate([self.feats[j] for j in self._batches[i]])


def _better(new: float, old: float, higher_is_better: bool) -> bool:
    return new > old if higher_is_better else new < old


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _shard(batch: dict[str, Any], env: DistEnv) -> dict[str, Any]:
    """This process's rows of a batch (every tensor's first dimension is the batch)."""
    n = next(len(v) for v in batch.values() if isinstance(v, torch.Tensor))
    rows = slice(env.rank * n // env.world_size, (env.rank + 1) * n // env.world_size)
    return {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}



MODEL_FIELDS = ("task", "init", "tokenizer", "model", "lora")
"""Recipe fields that decide the model: a run resumes only with the same ones."""


def _read_recipe(path: Path) -> FinetuneConfig:
    try:
        return finetune_config_from_dict(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ConfigError) as e:
        raise CheckpointError(f"'{path}' cannot be read as a fine-tuning recipe ({type(e).__name__})") from None


def _check_same_model(saved: FinetuneConfig, cfg: FinetuneConfig, out: Path) -> None:
    for name in MODEL_FIELDS:
        was, now = getattr(saved, name), getattr(cfg, name)
        if was != now:
            raise CheckpointError(
                f"the checkpoint in '{out}' was fine-tuned with {name}={was!r}, not {now!r}; "
                "resume with the same recipe or choose another train.out_dir"
            )


def _fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in res.items())


def run(cfg: FinetuneConfig, *, resume: bool = False, progress: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says and report the metrics.

    Run it in one process, or in each of N processes started by ``torchrun`` with
    ``train.parallel=ddp`` (only rank 0 logs and writes files).

    Args:
        cfg: the recipe.
        resume: continue from the newest checkpoint in ``train.out_dir`` (exactly: the same
            losses as a run that never stopped).
        progress: show a progress bar.
        log: where one-line messages go.

    Returns:
        ``{"task", "init", "lora", "val" (best validation metrics), "test" (final metrics of
        the best model), "best_step", "memory", "seconds" (training time of this session),
        "model" (folder), "step", "interrupted"}``, plus ``"val_start"`` (the init's validation
        metrics) for tasks with ``eval_at_start``; also written to ``results.json`` unless
        the run was interrupted (Ctrl-C: a checkpoint is saved; continue with ``--resume``).

    Raises:
        AttnlabError: an existing run folder without ``resume``, bad data, a model that does
            not fit the task.
        NonFiniteError: the loss or gradients went NaN/inf as ``train.nonfinite`` does not tolerate.
    """
    tc = cfg.train
    out = Path(tc.out_dir)
    if resume and not has_checkpoint(out):
        raise AttnlabError(f"nothing to resume in '{out}' (no checkpoints); drop --resume to start a new run")
    if not resume and ((out / MODEL_DIR).exists() or (out / "results.json").exists() or has_checkpoint(out)):
        raise AttnlabError(f"'{out}' already holds a fine-tuning run; pass --resume to continue it, "
                           "or set train.out_dir to a new folder")
    if tc.parallel == "fsdp":
        raise ConfigError("fine-tuning supports train.parallel=ddp or none, not fsdp; use train.parallel=ddp")
    require_trackers(tc.log_to)  # a missing tensorboard / wandb fails now, not after building the task
    device = resolve_device(tc.device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    env = setup(tc, device.type)
    try:
        return _run(cfg, env, resume=resume, progress=progress and env.is_main, log=log if env.is_main else quiet)
    finally:
        env.close()


def _run(cfg: FinetuneConfig, env: DistEnv, *, resume: bool, progress: bool,
         log: Callable[[str], None]) -> dict[str, Any]:
    tc = cfg.train
    out = Path(tc.out_dir)
    device = env.device
    torch.manual_seed(tc.seed)
    task = task_class(cfg.task)(cfg)
    task.log = log
    splits = task.splits()
    model, tok = task.build(splits["train"])
    if cfg.lora is not None:
        wrapped = inject_lora(model, cfg.lora, trainable_extra=task.head_modules)
        log(f"LoRA rank {cfg.lora.rank} on {len(wrapped)} layers")
    feats = task.features(splits["train"], tok)
    if not feats:
        raise AttnlabError(f"no training features from '{cfg.data.train}'; check the file and the task options")
    model.to(device)
    if env.rank > 0:
        torch.manual_seed(rank_seed(tc.seed, env.rank))  # same init everywhere, own dropout masks
    trainable, total = count_parameters(model)
    par = f" | {env.mode} over {env.world_size} processes" if env.distributed else ""
    log(f"{cfg.task}: {len(splits['train']):,} train / {len(splits['val']):,} val / {len(splits['test']):,} test "
        f"examples | {trainable:,} trainable of {total:,} parameters | {device.type}{par}")
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out, log=log, read_config=_read_recipe)
        _check_same_model(ckpt.config, cfg, out)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    env.barrier()
    precision = run_precision(device, tc.dtype, log)
    amp = precision.autocast(device)
    with amp:  # what the task computes for later steps, at the steps' precision
        task.prepare(model, feats, out, resumed=ckpt is not None, splits=splits)
    stream = BatchStream(task, feats, tc.batch_size, tc.seed)
    kept: dict[str, Any] = {"best": None, "best_step": -1, "val_start": None}

    def micro_batch(step: int, micro: int) -> dict[str, Any]:
        batch = stream[step * tc.grad_accum + micro]  # the stream's batches in order, as before resumes existed
        return _to(_shard(batch, env) if env.world_size > 1 else batch, device)

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad(), amp:
            res = task.evaluate(model, splits["val"], tok)
        model.train()
        return res

    def validate(eval_model: nn.Module, step: int) -> tuple[dict[str, float], dict[str, Any]]:
        res = evaluate()  # the plain model: tasks may generate, which compiled graphs are not for
        if kept["best"] is None or _better(res[task.metric], kept["best"][task.metric], task.higher_is_better):
            kept.update(best=res, best_step=step)
            if env.is_main:
                save_finetuned(out / MODEL_DIR, model, tok, cfg, task.state, {"step": step, "val": res})
        if step == tc.max_steps:
            log(f"step {step}: {_fmt(res)}")
        return res, {"step": step, **{f"val_{k}": v for k, v in res.items()}, "precision": precision.name}

    recipe = Recipe(cfg=cfg, model=model, loss=task.loss, micro_batch=micro_batch, validate=validate,
                    describe=_fmt, amp=amp, state=lambda: dict(kept), step_metrics=task.train_metrics)
    engine = Engine(recipe, env, ckpt=ckpt, log=log, progress=progress)
    kept.update(engine.resumed)
    if task.eval_at_start and ckpt is None:
        kept["val_start"] = evaluate()
        if env.is_main:
            engine.metrics.write({"step": 0, **{f"val_{k}": v for k, v in kept["val_start"].items()}})
        log("step 0: " + _fmt(kept["val_start"]))
    t0 = time.time()
    result = engine.run()
    seconds = time.time() - t0
    summary: dict[str, Any] = {"task": cfg.task, "init": cfg.init, "lora": cfg.lora is not None,
                               "precision": precision.name, "best_step": kept["best_step"], "val": kept["best"],
                               "step": result.step,
                               "interrupted": result.interrupted}
    if result.interrupted:
        return summary
    memory = _memory_report(model, device)
    env.barrier()  # rank 0 has written the best model
    _, best_model, _ = load_finetuned(out / MODEL_DIR, device)
    with torch.no_grad(), amp:
        test = task.evaluate(best_model, splits["test"], tok)
    summary.update(test=test, memory=memory, seconds=round(seconds, 1), model=str(out / MODEL_DIR))
    if kept["val_start"] is not None:
        summary["val_start"] = kept["val_start"]
    if env.is_main:
        tmp = out / ".results.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(out / "results.json")
    log(f"{cfg.task}: test {_fmt(test)} (best step {kept['best_step']})")
    return summary
