"""``attnlab generate CKPT --prompt TEXT``: sample text, printed as it is produced.

For an encoder–decoder checkpoint the prompt is the source and the output is what the
decoder writes; ``--num-beams N`` runs beam search (printed when finished) instead of sampling.
``--compile`` (decoder-only transformers, no beams) decodes on the fast path of
:mod:`attnlab.generate.fast`: a static KV cache and a decode step compiled once.
``--chat TEXT`` (with ``--system TEXT``) runs one turn of ``attnlab chat`` for scripts: the
message is rendered through the model's chat template and only the reply is printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnlab.generate import SamplingConfig


DEFAULT_MAX_NEW_TOKENS = 200
"""The most new tokens generated when ``--max-new-tokens`` is not given (fewer when the context is shorter)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from attnlab.cli._common import add_weight_flags

    p = sub.add_parser(
        "generate",
        help="generate text from a checkpoint",
        description="Continue a prompt with a trained model (KV-cached decoding). "
        "--temperature 0 is greedy.",
    )
    # Numbers are read as text and checked by SamplingConfig, so a bad one is a one-line error (exit 2).
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    p.add_argument("--chat", default=None, metavar="TEXT",
                   help="one chat turn: TEXT is the user's message, rendered through the model's chat template "
                   "(see attnlab chat); prints only the reply. Not with --prompt")
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt of the --chat turn")
    p.add_argument("--max-new-tokens", default=None, metavar="N",
                   help=f"tokens to generate at most (default: as many as the model's context holds after the "
                   f"prompt, at most {DEFAULT_MAX_NEW_TOKENS}); more than the context holds is an error")
    add_sampling_flags(p)
    p.add_argument("--num-samples", default="1", metavar="N",
                   help="samples to draw (with beams: best beams to print; default: 1)")
    p.add_argument("--num-beams", default="1", metavar="N", help="beam search width (1: sample or greedy; default: 1)")
    p.add_argument("--length-penalty", default="1.0", metavar="X",
                   help="beam score = sum log p / length**X (default: 1.0)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the generated text contains TEXT (not printed); repeatable")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (slow)")
    p.add_argument("--compile", action="store_true",
                   help="decoder-only: static KV cache + torch.compile'd decode step (CUDA graphs on GPU); "
                   "same tokens, faster for long outputs once compiled")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_weight_flags(p)
    p.set_defaults(func=run)


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """``--temperature``, ``--top-k``, ``--top-p`` and ``--seed`` (``generate`` and ``chat``), read as text and
    checked by :func:`sampling_config`."""
    p.add_argument("--temperature", default="0.8", metavar="T", help="sampling temperature, >= 0; 0 is greedy "
                   "(default: 0.8)")
    p.add_argument("--top-k", default=None, metavar="K", help="sample among the K most likely tokens (0: off)")
    p.add_argument("--top-p", default=None, metavar="P", help="sample from the nucleus of mass P, in (0, 1]")
    p.add_argument("--seed", default=None, metavar="S", help="seed for reproducible sampling (0..2**63-1)")


_FIELDS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float, "seed": int,
           "num_beams": int, "length_penalty": float}
"""SamplingConfig fields set from the flag of the same name, with the type its text must parse as (a parser
without a flag leaves the field at its default)."""


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _number(text: Any, field: str, kind: type) -> Any:
    """``text`` (a flag's value) as an int or float; a one-line AttnlabError if it is neither."""
    from attnlab.errors import AttnlabError

    if text is None or not isinstance(text, str):
        return text
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise AttnlabError(f"{_flag(field)} must be {what}, got '{text}'") from None


def _checked(cfg: SamplingConfig | None, **values: Any) -> SamplingConfig:
    """``cfg`` (None: the defaults) with ``values``, validated; a bad value is a one-line error naming its flag."""
    from attnlab.errors import AttnlabError
    from attnlab.generate import SamplingConfig, SamplingError

    try:
        return (cfg or SamplingConfig()).with_options(**values)
    except SamplingError as e:
        raise AttnlabError(f"{_flag(e.field)} {e.problem}") from None


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    """The :class:`~attnlab.generate.SamplingConfig` of the flags (``max_new_tokens`` None when not given).

    With ``--num-beams`` > 1 the sampling flags (temperature, top-k, top-p) do not apply: beam search is
    deterministic; their values are still checked.

    Raises:
        AttnlabError: a value that is not a number or out of range, naming the flag.
    """
    values = {field: _number(getattr(args, field), field, kind) for field, kind in _FIELDS.items()
              if hasattr(args, field)}
    beams = values.pop("num_beams", 1)
    cfg = _checked(None, **values)
    return cfg if beams == 1 else _checked(cfg, num_beams=beams, temperature=0.0, top_k=None, top_p=None)


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


def _budget(cfg: SamplingConfig, n_prompt: int, limit: int, encdec: bool) -> int:
    """New tokens to generate: ``--max-new-tokens``, or by default what the context holds, capped.

    Raises:
        AttnlabError: the prompt (with ``--max-new-tokens``) does not fit the model's context.
    """
    from attnlab.errors import AttnlabError

    used = 1 if encdec else n_prompt  # the decoder's start token, or the prompt
    room = limit - used
    if cfg.max_new_tokens is None:
        if room < 1:
            raise AttnlabError(f"the prompt is {n_prompt} tokens and fills the model's context of {limit} tokens; "
                               "shorten the prompt")
        return min(DEFAULT_MAX_NEW_TOKENS, room)
    if cfg.max_new_tokens <= room:
        return cfg.max_new_tokens
    if encdec:
        raise AttnlabError(f"--max-new-tokens {cfg.max_new_tokens} exceeds the decoder's context of {limit} "
                           f"(start token included); lower it to {room}")
    raise AttnlabError(f"prompt is {n_prompt} tokens and --max-new-tokens is {cfg.max_new_tokens}, but the model's "
                       f"context is {limit} tokens; shorten the prompt or lower --max-new-tokens to {max(room, 0)}")


def _chat_turn(args: argparse.Namespace, cfg: SamplingConfig, num_samples: int) -> int:
    """``--chat TEXT``: one turn rendered through the model's chat template; only the reply goes to stdout."""
    from attnlab.cli._chat import chat_lines, load_chat_model
    from attnlab.errors import AttnlabError
    from attnlab.generate.chat import ChatSession

    if args.chat is None:
        raise AttnlabError("--system is the system prompt of a --chat turn; add --chat TEXT or drop --system")
    if args.prompt is not None:
        raise AttnlabError("--chat and --prompt both give the input; use --chat for a chat turn or --prompt to "
                           "continue raw text, not both")
    extra = [flag for flag, given in (("--num-beams", cfg.num_beams > 1), ("--num-samples", num_samples != 1),
                                      ("--stop", bool(args.stop)), ("--compile", args.compile),
                                      ("--no-cache", args.no_cache)) if given]
    if extra:
        raise AttnlabError(f"{extra[0]} does not apply to --chat (one streamed reply, ended by the chat template); "
                           "drop it")
    model, tok, template, _, weights = load_chat_model(args.checkpoint, args.device, args.dtype, args.quantize)
    chat = ChatSession(model, tok, template, cfg, system=args.system,
                       on_notice=lambda line: print(line, file=sys.stderr, flush=True))
    print(chat_lines(template, weights), file=sys.stderr, flush=True)  # stderr: stdout stays the reply

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    chat.reply(args.chat, on_text=show)
    sys.stdout.write("\n")
    return 0


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from attnlab.cli._common import load_for_decoding
    from attnlab.errors import AttnlabError
    from attnlab.generate import generate, is_encoder_decoder, stream

    cfg = sampling_config(args)
    num_samples = _number(args.num_samples, "num_samples", int)
    if num_samples <= 0:
        raise AttnlabError(f"--num-samples must be positive, got {num_samples}")
    if cfg.num_beams > 1 and num_samples > cfg.num_beams:
        raise AttnlabError(f"--num-samples {num_samples} exceeds --num-beams {cfg.num_beams}; "
                           "beam search returns at most one sequence per beam")
    if cfg.num_beams == 1 and cfg.seed is not None:  # sample i is seeded with seed + i: check the last one
        _checked(cfg, seed=cfg.seed + num_samples - 1)
    if args.chat is not None or args.system is not None:
        return _chat_turn(args, cfg, num_samples)
    if args.compile and (cfg.num_beams > 1 or args.no_cache):
        raise AttnlabError("--compile runs greedy/sampled decoding on a static KV cache; drop --num-beams/--no-cache "
                           "or --compile")
    if any(not t for t in args.stop):
        raise AttnlabError("--stop needs a non-empty text")
    model, tok, ckpt, device, weights = load_for_decoding(args.checkpoint, args.device, args.dtype, args.quantize)
    if ckpt.config.model.arch == "encoder":
        raise AttnlabError(f"'{ckpt.path}' holds an encoder (model.arch=encoder, masked LM), which does not "
                           "generate text; evaluate it with attnlab eval or fine-tune it with attnlab finetune")
    ids = tok.encode("\n" if args.prompt is None else args.prompt)
    if not ids:
        raise AttnlabError("the prompt encodes to no tokens; pass a non-empty --prompt")
    encdec = is_encoder_decoder(model)
    if encdec and len(ids) > model.config.block_size:
        raise AttnlabError(f"the source is {len(ids)} tokens but the encoder reads at most "
                           f"{model.config.block_size}; shorten the prompt")
    n = _budget(cfg, len(ids), model.max_context, encdec)
    cfg = dataclasses.replace(cfg, max_new_tokens=n)
    fast = _fast_decoder(model, len(ids) + n) if args.compile else None
    x = torch.tensor([ids], device=device)
    print(weights.line(), file=sys.stderr, flush=True)  # stderr: stdout stays the text
    skip = 1 if encdec else len(ids)  # the decoder's start token, or the echoed prompt
    head = [] if encdec else list(ids)
    sep = "-" * 40 + "\n"
    if cfg.num_beams > 1:
        seqs = generate(model, x, sampling=dataclasses.replace(cfg, num_return_sequences=num_samples),
                        eos_token_id=tok.eos_id, use_cache=not args.no_cache)
        for i, row in enumerate(seqs.tolist()):
            _print_sample(tok, head, row[skip:], args.stop)
            sys.stdout.write(sep if i + 1 < len(seqs) else "")
        return 0
    for i in range(num_samples):
        sample = cfg if cfg.seed is None else dataclasses.replace(cfg, seed=cfg.seed + i)
        steps = (fast.stream(x, sampling=sample, eos_token_id=tok.eos_id) if fast is not None
                 else stream(model, x, sampling=sample, eos_token_id=tok.eos_id, use_cache=not args.no_cache))
        _print_sample(tok, head, (t[0] for t in steps), args.stop)
        sys.stdout.write(sep if i + 1 < num_samples else "")
    if fast is not None:  # say which path ran (stderr: stdout stays the text)
        print(f"decode path: {fast.path}, compiled {fast.compiles}x", file=sys.stderr)
    return 0
