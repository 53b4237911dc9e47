"""``attnlab train CONFIG [section.key=value ...] [--resume]``."""

from __future__ import annotations

import argparse
import os

from attnlab.config import list_presets, load
from attnlab.errors import AttnlabError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain a model (decoder, encoder or encoder-decoder) from a YAML config",
        description="Pretrain a model with its objective (train.objective: next-token for decoders, "
        "masked LM for encoders, span corruption for encoder-decoders). CONFIG is a preset name or a "
        "YAML file; any field can be overridden as section.key=value (e.g. train.max_steps=200 model.n_layer=2). "
        "Ctrl-C saves a checkpoint; --resume continues exactly where it stopped. Several processes: "
        "torchrun --nproc_per_node N -m attnlab train CONFIG train.parallel=ddp|fsdp (train.batch_size is the "
        "global micro-batch; only rank 0 logs).",
        epilog=f"presets: {', '.join(list_presets())}",
    )
    p.add_argument("config", help="preset name or path to a YAML config")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.out_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.train import train  # heavy imports only when needed

    cfg = load(args.config, args.overrides)
    rank = int(os.environ.get("RANK") or 0)  # set by torchrun
    try:
        s = train(cfg, resume=args.resume, progress=not args.no_progress)
    except AttnlabError:
        if rank > 0:  # under torchrun the error is printed once, by rank 0
            return 2
        raise
    if rank > 0:
        return 130 if s["interrupted"] else 0
    if s["interrupted"]:
        return 130
    print(f"\nfinished {s['step']} steps in {cfg.train.out_dir}")
    if "val_ppl" in s:
        print(
            f"validation loss {s['val_loss']:.4f} nats/token (perplexity {s['val_ppl']:.2f}), "
            f"{s['val_bpb']:.3f} bits/byte\n"
            f"unigram entropy of the corpus {s['unigram_entropy']:.4f} nats/token, {s['unigram_bpb']:.3f} bits/byte"
        )
    elif "val_loss" in s:
        print(
            f"validation {s['objective']} loss {s['val_loss']:.4f} nats per predicted token\n"
            f"unigram entropy of the corpus {s['unigram_entropy']:.4f} nats/token"
        )
    if s.get("tokens_per_s"):
        mfu = f", {s['mfu']:.1%} model FLOPs utilisation" if s.get("mfu") else ""
        print(f"throughput: {s['tokens_per_s']:,.0f} tokens/s{mfu}")
    print(f"checkpoint: {s['checkpoint']}\nloss curve: {s['loss_curve']}")
    return 0
