"""``attnlab chat RUN``: a multi-turn conversation in the terminal.

Each line typed after the ``> `` prompt is a user turn; the reply streams to stdout as it is
generated, rendered through the model's chat template (see :mod:`attnlab.generate.chat`).
Commands: ``/reset`` forgets the turns (keeps the system prompt), ``/exit`` (or Ctrl-D, Ctrl-C)
leaves, ``/help`` lists them. Notices (history trimmed, a turn too long) go to stderr.
"""

from __future__ import annotations

import argparse
import sys

HELP = """commands:
  /reset   forget the conversation (the system prompt stays)
  /exit    leave (Ctrl-D and Ctrl-C too)
  /help    this list
anything else is your message to the model"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from attnlab.cli._common import add_weight_flags
    from attnlab.cli.generate import add_sampling_flags

    p = sub.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="Chat with a fine-tuned (lm/sft) or pretrained model, turn by turn: each line you type is "
        "rendered with the conversation so far through the model's chat template (its tokenizer_config.json; "
        "else ChatML when the tokenizer has <|im_start|>/<|im_end|>; else plain User:/Assistant: lines), and "
        "the reply streams as it is generated. Commands: /reset, /exit, /help. The oldest turns are dropped "
        "when the conversation outgrows the model's context.",
    )
    p.add_argument("run", help="fine-tuned run (RUN or RUN/model), or run / checkpoint folder of attnlab train")
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt, kept first in every turn")
    p.add_argument("--max-new-tokens", default=None, metavar="N",
                   help="tokens of one reply at most (default: 200, at most half the model's context)")
    add_sampling_flags(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_weight_flags(p)
    p.set_defaults(func=run)


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _loop(chat) -> int:
    """Read lines until /exit, EOF or Ctrl-C; answer each one. Returns the exit status (0)."""
    from attnlab.errors import AttnlabError

    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            _write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            chat.reset()
            _note("conversation reset" + (" (system prompt kept)" if chat.system else ""))
            continue
        if text == "/help":
            _note(HELP)
            continue
        if text.startswith("/") and " " not in text:
            _note(f"unknown command {text}; /help lists the commands")
            continue
        try:
            chat.reply(text, on_text=_write)
        except AttnlabError as e:
            _note(f"error: {e}")
            continue
        except KeyboardInterrupt:
            _write("\n")
            return 0
        _write("\n")


def run(args: argparse.Namespace) -> int:
    from attnlab.cli._chat import chat_lines, load_chat_model
    from attnlab.cli.generate import sampling_config
    from attnlab.generate.chat import ChatSession

    cfg = sampling_config(args)
    model, tok, template, _, weights = load_chat_model(args.run, args.device, args.dtype, args.quantize)
    chat = ChatSession(model, tok, template, cfg, system=args.system, on_notice=_note)
    _note(chat_lines(template, weights))
    _note(f"context {chat.context} tokens, replies up to {chat.max_new_tokens}; /help for commands, /exit to leave")
    return _loop(chat)
