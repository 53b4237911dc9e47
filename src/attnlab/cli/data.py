"""``attnlab data prepare SOURCE --out DIR``: turn real data installed offline into task files."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from attnlab.data.sources import SOURCES

    p = sub.add_parser("data", help="prepare labelled task data from packages installed offline",
                       description="Write train/val/test JSON Lines for a fine-tuning task from data that "
                       "pip or apt installed (no downloads at run time).")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    prep = verbs.add_parser("prepare", help="write a source's task files")
    prep.add_argument("source", help=f"one of: {', '.join(SOURCES)}")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--path", default=None, help="the raw file, when it is not where its package puts it")
    prep.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    prep.add_argument("--limit", type=int, default=0, help="at most this many examples (0: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.data.sources import prepare_source
    from attnlab.data.tasks import read_records

    files = prepare_source(args.source, args.out, path=args.path, seed=args.seed, limit=args.limit)
    for split, path in files.items():
        print(f"{split}: {path} ({len(read_records(path)):,} examples)")  # JSONL rows or SQuAD questions
    return 0
