"""``attnlab generate CKPT --prompt TEXT``: sample text, printed as it is produced.

For an encoder–decoder checkpoint the prompt is the source and the output is what the
decoder writes; ``--num-beams N`` runs beam search (printed when finished) instead of sampling.
``--compile`` (decoder-only transformers, no beams) decodes on the fast path of
:mod:`attnlab.generate.fast`: a static KV cache and a decode step compiled once.
"""

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
    p.add_argument("--num-samples", type=int, default=1, help="samples to draw (with beams: best beams to print)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1: sample or greedy)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score / length**penalty")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the generated text contains TEXT (not printed); repeatable")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (slow)")
    p.add_argument("--compile", action="store_true",
                   help="decoder-only: static KV cache + torch.compile'd decode step (CUDA graphs on GPU); "
                   "same tokens, faster for long outputs once compiled")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=run)


def _print_sample(tok, head: list[int], tokens, stops: list[str]) -> None:
    """Print the head, then the generated text as it becomes safe to show (see :class:`TextStream`)."""
    from attnlab.generate.text import TextStream

    sys.stdout.write(tok.decode(head))
    text = TextStream(tok, stops, tok.eos_id, prefix_ids=head)
    for t in tokens:
        sys.stdout.write(text.push(int(t)))
        sys.stdout.flush()
        if text.finished:
            break
    sys.stdout.write(text.flush() + "\n")


def _fast_decoder(model, max_len: int):
    """A one-row :class:`~attnlab.generate.FastDecoder`, or a one-line error for models it does not take."""
    from attnlab.errors import AttnlabError
    from attnlab.generate import FastDecoder

    try:
        return FastDecoder(model, batch_size=1, max_len=max_len)
    except ValueError as e:
        raise AttnlabError(f"--compile: {e}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from attnlab.cli._common import load_for_inference
    from attnlab.errors import AttnlabError
    from attnlab.generate import generate, is_encoder_decoder, stream

    if args.max_new_tokens <= 0 or args.num_samples <= 0 or args.num_beams <= 0:
        raise AttnlabError("--max-new-tokens, --num-samples and --num-beams must be positive")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise AttnlabError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.num_beams > 1 and args.num_samples > args.num_beams:
        raise AttnlabError(f"--num-samples {args.num_samples} exceeds --num-beams {args.num_beams}; "
                           "beam search returns at most one sequence per beam")
    if args.compile and (args.num_beams > 1 or args.no_cache):
        raise AttnlabError("--compile runs greedy/sampled decoding on a static KV cache; drop --num-beams/--no-cache "
                           "or --compile")
    model, tok, ckpt, device = load_for_inference(args.checkpoint, args.device)
    if ckpt.config.model.arch == "encoder":
        raise AttnlabError(f"'{ckpt.path}' holds an encoder (model.arch=encoder, masked LM), which does not "
                           "generate text; evaluate it with attnlab eval or fine-tune it with attnlab finetune")
    ids = tok.encode(args.prompt)
    if not ids:
        raise AttnlabError("the prompt encodes to no tokens; pass a non-empty --prompt")
    encdec = is_encoder_decoder(model)
    limit = model.max_context
    if encdec:
        if len(ids) > model.config.block_size:
            raise AttnlabError(f"the source is {len(ids)} tokens but the encoder reads at most "
                               f"{model.config.block_size}; shorten the prompt")
        if args.max_new_tokens + 1 > limit:
            raise AttnlabError(f"--max-new-tokens {args.max_new_tokens} exceeds the decoder's context of {limit} "
                               f"(start token included); lower it to {limit - 1}")
    elif len(ids) + args.max_new_tokens > limit:
        raise AttnlabError(
            f"prompt is {len(ids)} tokens and --max-new-tokens is {args.max_new_tokens}, but the model's "
            f"context is {limit} tokens; shorten the prompt or lower --max-new-tokens to {max(limit - len(ids), 0)}"
        )
    fast = _fast_decoder(model, len(ids) + args.max_new_tokens) if args.compile else None
    x = torch.tensor([ids], device=device)
    skip = 1 if encdec else len(ids)  # the decoder's start token, or the echoed prompt
    head = [] if encdec else list(ids)
    if any(not t for t in args.stop):
        raise AttnlabError("--stop needs a non-empty text")
    sep = "-" * 40 + "\n"
    if args.num_beams > 1:
        seqs = generate(model, x, args.max_new_tokens, num_beams=args.num_beams, length_penalty=args.length_penalty,
                        num_return_sequences=args.num_samples, eos_token_id=tok.eos_id,
                        use_cache=not args.no_cache, temperature=0.0)
        for i, row in enumerate(seqs.tolist()):
            _print_sample(tok, head, row[skip:], args.stop)
            sys.stdout.write(sep if i + 1 < len(seqs) else "")
        return 0
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        kwargs = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_token_id=tok.eos_id,
                      seed=seed)
        steps = (fast.stream(x, args.max_new_tokens, **kwargs) if fast is not None
                 else stream(model, x, args.max_new_tokens, use_cache=not args.no_cache, **kwargs))
        _print_sample(tok, head, (t[0] for t in steps), args.stop)
        sys.stdout.write(sep if i + 1 < args.num_samples else "")
    if fast is not None:  # say which path ran (stderr: stdout stays the text)
        print(f"decode path: {fast.path}, compiled {fast.compiles}x", file=sys.stderr)
    return 0
