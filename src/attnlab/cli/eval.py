"""``attnlab eval RUN``: a pretrained checkpoint's loss and perplexity, a fine-tuned model's task metrics,
or a chat model's instruction following (``--suite instruct``).

    attnlab eval runs/gpt-tiny                                  # validation loss, perplexity, bits per byte
    attnlab eval runs/gpt-tiny --dtype float32                  # ... in fp32 (default auto: bf16 where native)
    attnlab eval runs/sentiment-minilm                          # the task's metrics on the recipe's test file
    attnlab eval runs/sentiment-minilm --data reviews.jsonl     # ... on another file
    attnlab eval runs/llama-tiny --seq-len 512 --rope-scaling ntk --rope-factor 4   # beyond the training length
    attnlab eval runs/chat-sft --suite instruct --data data/instruct/test.jsonl \
        --preferences data/prefs/test.jsonl --limit 100 --out results/instruct.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from attnlab.cli._eval_instruct import add_instruct_flags, check_no_instruct_flags, run_instruct
from attnlab.eval.context import SCALINGS
from attnlab.precision import DTYPES, Precision, resolve_precision

if TYPE_CHECKING:
    import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="report a checkpoint's loss/perplexity, or a fine-tuned model's task metrics",
        description="Evaluate a checkpoint. A pretraining run (attnlab train): next-token loss on the "
        "validation split of its data, or on --data (text file, folder or builtin:NAME). A fine-tuned model "
        "(attnlab finetune; detected from its folder): the task's metrics (accuracy/F1, EM/F1, BLEU, loss...) "
        "on the recipe's --split file, or on --data (a task file such as test.jsonl). With --suite instruct, a "
        "chat model (fine-tuned or pretrained): greedy replies to the prompts of --data (the test.jsonl of `attnlab "
        "data prepare instruct`) scored per task (sentiment accuracy, translation chrF/BLEU, reading EM/F1, "
        "headline chrF/ROUGE-L, poem form), and with --preferences how often it gives the chosen reply a higher "
        "log-probability than the rejected one.",
    )
    p.add_argument("checkpoint", help="run folder or checkpoint folder (pretrained or fine-tuned)")
    p.add_argument("--data", default=None,
                   help="data to evaluate on (default: the model's own data); with --suite instruct the instruct "
                   "test.jsonl")
    p.add_argument("--split", choices=["train", "val", "test"], default=None,
                   help="split of the model's own data (default: val for pretraining runs, test for fine-tuned)")
    p.add_argument("--batches", type=int, default=50,
                   help="pretraining runs: number of batches (spread over the split)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="pretraining runs: windows per batch; --preferences: pairs per forward pass")
    p.add_argument("--seq-len", type=int, default=0,
                   help="pretraining runs: tokens per window (default: the training seq_len). Longer than the "
                   "model's block_size works for every position scheme but learned positions (the RoPE, ALiBi, "
                   "relative and sinusoidal tables are computed, the weights load unchanged)")
    p.add_argument("--rope-scaling", choices=list(SCALINGS), default=None,
                   help="pretraining runs of RoPE models: replace the checkpoint's RoPE scaling: none (plain "
                   "extrapolation), linear (position interpolation) or ntk (base rescaling); default: the "
                   "checkpoint's own")
    p.add_argument("--rope-factor", type=float, default=None,
                   help="with --rope-scaling linear or ntk (required there): how many times longer than the "
                   "trained context RoPE should reach, e.g. --seq-len / the training seq_len")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--dtype", default="auto", choices=list(DTYPES),
                   help="precision: auto (bf16 autocast on CUDA and on a CPU with native bf16, else float32), "
                   "float32 or bfloat16; the choice and its reason go to stderr. With --suite instruct: the weights' "
                   "dtype, as in attnlab generate")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    add_instruct_flags(p)
    p.set_defaults(func=run)


def _is_finetuned(path: str) -> bool:
    p = Path(path)
    return (p / "task.json").is_file() or (p / "model" / "task.json").is_file()


def _precision(args: argparse.Namespace, device: torch.device) -> Precision:
    """``--dtype`` resolved on ``device``, said on one stderr line (stdout stays the result)."""
    precision = resolve_precision(args.dtype, device)
    print(f"precision: {precision.reason}", file=sys.stderr)
    return precision


def run(args: argparse.Namespace) -> int:
    if args.suite == "instruct":
        return run_instruct(args)
    check_no_instruct_flags(args)
    return (_run_finetuned if _is_finetuned(args.checkpoint) else _run_lm)(args)


def _run_finetuned(args: argparse.Namespace) -> int:
    import torch

    from attnlab.errors import AttnlabError
    from attnlab.finetune import load_finetuned
    from attnlab.train.run_state import resolve_device

    if args.rope_scaling is not None or args.rope_factor is not None:
        raise AttnlabError(f"--rope-scaling and --rope-factor apply to pretraining runs; '{args.checkpoint}' "
                           "is a fine-tuned model, drop them")
    device = resolve_device(args.device)
    task, model, tok = load_finetuned(args.checkpoint, device)
    split = args.split or "test"
    d = task.cfg.data
    source = args.data or {"train": d.train, "val": d.val, "test": d.test or d.val}[split]
    if not source:
        raise AttnlabError(f"the recipe of '{args.checkpoint}' names no {split} file; pass --data FILE")
    examples = task.read(source)
    precision = _precision(args, device)
    with torch.no_grad(), precision.autocast(device):
        res = task.evaluate(model, examples, tok)
    if args.json:
        print(json.dumps({"task": task.name, "data": str(source), "examples": len(examples), **res,
                          "precision": precision.name}))
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in res.items())
        print(f"{args.checkpoint} ({task.name}) on {source} ({len(examples):,} examples): {metrics}")
    return 0


def _run_lm(args: argparse.Namespace) -> int:
    from attnlab.cli._common import load_for_inference
    from attnlab.data import prepare
    from attnlab.errors import AttnlabError
    from attnlab.eval.context import extend_model, rope_label
    from attnlab.train.objectives import build_objective

    split = args.split or "val"
    if split == "test":
        raise AttnlabError("a pretraining run has train and val splits only; use --split val or --data FILE")
    model, tok, ckpt, device = load_for_inference(args.checkpoint, args.device)
    data_cfg = ckpt.config.data
    if args.data:
        data_cfg.source = args.data
    data = prepare(data_cfg, tokenizer=tok, progress=False)
    objective = build_objective(ckpt.config, tok)  # the pretraining objective: clm, mlm or span
    seq_len = args.seq_len or ckpt.config.train.seq_len or model.config.block_size
    if args.rope_factor is not None and args.rope_scaling is None:
        raise AttnlabError("--rope-factor needs --rope-scaling linear or ntk")
    if args.rope_scaling is not None or seq_len > getattr(model, "max_context", model.config.block_size):
        model = extend_model(model, seq_len, args.rope_scaling, args.rope_factor)
    precision = _precision(args, device)
    res = objective.evaluate(model, data, split=split, batch_size=args.batch_size, seq_len=seq_len,
                             max_batches=args.batches, device=device, autocast=precision.autocast(device),
                             seed=ckpt.config.train.seed)
    res.update(step=ckpt.step, objective=objective.name, seq_len=seq_len, precision=precision.name)
    rope = rope_label(model.config)
    if rope is not None:
        res.update(rope_scaling=model.config.rope_scaling, rope_factor=model.config.rope_scaling_factor)
    where = f"{split}, seq_len {seq_len}" + (f", rope_scaling {rope}" if rope else "")
    if args.json:
        print(json.dumps(res))
    elif "ppl" in res:
        print(f"{ckpt.path} on {data_cfg.source} ({where}, {int(res['tokens']):,} tokens): "
              f"loss {res['loss']:.4f}, perplexity {res['ppl']:.2f}, {res['bpb']:.3f} bits/byte")
    else:  # perplexity and bits/byte are defined for next-token loss only
        print(f"{ckpt.path} on {data_cfg.source} ({where}, {int(res['tokens']):,} predicted tokens): "
              f"{objective.name} loss {res['loss']:.4f} nats per predicted token")
    return 0
