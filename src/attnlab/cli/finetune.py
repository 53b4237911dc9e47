"""``attnlab finetune TASK RECIPE [overrides]``: fine-tune a model on a labelled task."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    from attnlab.finetune.recipe import TASKS

    p = sub.add_parser(
        "finetune",
        help=f"fine-tune a model on a task ({', '.join(TASKS)})",
        description="Fine-tune from a Hugging Face directory (init=hf:DIR), an attnlab run, or from scratch "
        "(init=preset:NAME), then report the task's metrics. RECIPE is a YAML file or a name under "
        "configs/finetune/; any field can be overridden: train.max_steps=100 options.max_length=64 lora.rank=8.",
    )
    p.add_argument("task", help=f"one of: {', '.join(TASKS)}")
    p.add_argument("recipe", help="recipe YAML (path or name under configs/finetune/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from its newest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.finetune import load_finetune_config
    from attnlab.finetune import run as finetune

    cfg = load_finetune_config(args.recipe, args.task, args.overrides)
    result = finetune(cfg, resume=args.resume, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result))
    return 130 if result["interrupted"] else 0  # Ctrl-C: saved, continue with --resume
