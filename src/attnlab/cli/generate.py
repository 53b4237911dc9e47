"""``attnlab generate CKPT --prompt TEXT``: sample text, printed as it is produced."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a checkpoint",
        description="Continue a prompt with a trained model (KV-cached decoding). "
        "--temperature 0 is greedy.",
    )
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (slow)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from attnlab.cli._common import load_for_inference
    from attnlab.errors import AttnlabError
    from attnlab.generate import stream

    if args.max_new_tokens <= 0 or args.num_samples <= 0:
        raise AttnlabError("--max-new-tokens and --num-samples must be positive")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise AttnlabError(f"--top-p must be in (0, 1], got {args.top_p}")
    model, tok, _, device = load_for_inference(args.checkpoint, args.device)
    ids = tok.encode(args.prompt)
    if not ids:
        raise AttnlabError("the prompt encodes to no tokens; pass a non-empty --prompt")
    limit = model.max_context
    if len(ids) + args.max_new_tokens > limit:
        raise AttnlabError(
            f"prompt is {len(ids)} tokens and --max-new-tokens is {args.max_new_tokens}, but the model's "
            f"context is {limit} tokens; shorten the prompt or lower --max-new-tokens to {max(limit - len(ids), 0)}"
        )
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        x = torch.tensor([ids], device=device)
        out = list(ids)
        printed = tok.decode(out)
        sys.stdout.write(printed)
        for t in stream(model, x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, eos_token_id=tok.eos_id, seed=seed, use_cache=not args.no_cache):
            if tok.eos_id is not None and int(t[0]) == tok.eos_id:
                break
            out.append(int(t[0]))
            text = tok.decode(out)  # decode the whole so multi-byte characters print whole
            if text.startswith(printed):
                sys.stdout.write(text[len(printed):])
                sys.stdout.flush()
                printed = text
        sys.stdout.write("\n" + ("-" * 40 + "\n" if i + 1 < args.num_samples else ""))
    return 0
