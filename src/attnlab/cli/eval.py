"""``attnlab eval CKPT``: validation loss, perplexity and bits per byte."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="report loss and perplexity of a checkpoint on a dataset",
        description="Evaluate a checkpoint's next-token loss. By default on the validation split "
        "of the data it was trained on; --data evaluates on another text file/folder.",
    )
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--data", default=None, help="text file, folder or builtin:NAME (default: the training data)")
    p.add_argument("--split", choices=["train", "val"], default="val")
    p.add_argument("--batches", type=int, default=50, help="number of batches (spread over the split)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=0, help="tokens per window (default: the training seq_len)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.cli._common import load_for_inference
    from attnlab.data import prepare
    from attnlab.errors import AttnlabError
    from attnlab.eval import evaluate_lm
    from attnlab.train.loop import autocast_for

    model, tok, ckpt, device = load_for_inference(args.checkpoint, args.device)
    data_cfg = ckpt.config.data
    if args.data:
        data_cfg.source = args.data
    data = prepare(data_cfg, tokenizer=tok, progress=False)
    seq_len = args.seq_len or ckpt.config.train.seq_len or model.config.block_size
    if seq_len > model.max_context:
        raise AttnlabError(f"--seq-len {seq_len} exceeds the model's context {model.max_context}; lower --seq-len")
    res = evaluate_lm(model, data, split=args.split, batch_size=args.batch_size, seq_len=seq_len,
                      max_batches=args.batches, device=device, autocast=autocast_for(device, "auto"))
    res["step"] = ckpt.step
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{ckpt.path} on {data_cfg.source} ({args.split}, {int(res['tokens']):,} tokens): "
              f"loss {res['loss']:.4f}, perplexity {res['ppl']:.2f}, {res['bpb']:.3f} bits/byte")
    return 0
