"""The ``attnlab`` command line.

Each subcommand lives in its own module with two functions: ``add_parser(subparsers)``
registers its arguments and ``run(args) -> int`` does the work. User errors
(:class:`attnlab.errors.AttnlabError`) are printed as one line, exit code 2, and so are
the operating system's refusals to write (disk full, read-only file system, no permission).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from attnlab import __version__
from attnlab.cli._common import Parser
from attnlab.errors import AttnlabError

# Errors the user fixes outside attnlab, with the fix.
_WRITE_ERRORS = {
    errno.ENOSPC: "free disk space (df -h), then continue with --resume where the command has it",
    errno.EDQUOT: "free space within your disk quota, then continue with --resume where the command has it",
    errno.EROFS: "the file system is read-only; write to another folder",
    errno.EACCES: "you may not write there; fix its permissions or write to another folder",
}

SUBCOMMANDS = ["train", "finetune", "data", "eval", "generate", "chat", "convert", "tokenizer", "viz", "bench", "serve"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = Parser(prog="attnlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"attnlab {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"attnlab.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``attnlab`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Dotted overrides may come after options: `attnlab train cfg --resume train.lr=1e-3`.
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except AttnlabError as e:
        print(f"attnlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _WRITE_ERRORS:
            raise
        where = f" ('{e.filename}')" if e.filename else ""
        print(f"attnlab {args.command}: error: {e.strerror}{where}; {_WRITE_ERRORS[e.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnlab {args.command}: interrupted", file=sys.stderr)
        return 130
