"""``attnlab tokenizer``: train a byte-level BPE tokenizer, or encode text with one.

    attnlab tokenizer train builtin:shakespeare my_texts/ --vocab-size 4096 --out tokenizer.json
    attnlab tokenizer encode tokenizer.json --text "To be, or not to be"
"""

from __future__ import annotations

import argparse
import sys

from attnlab.data.corpus import iter_documents
from attnlab.data.tokenizer import Tokenizer


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tokenizer train`` and ``tokenizer encode``."""
    parser = subparsers.add_parser(
        "tokenizer",
        help="train a BPE tokenizer or encode text with one",
        description=__doc__.splitlines()[0],
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    train.add_argument("paths", nargs="+", metavar="PATH",
                       help="text, .jsonl/.json(.gz/.zst) or .parquet files, directories, datasets folders, "
                            "glob patterns, or builtin:shakespeare")
    train.add_argument("--vocab-size", type=int, default=4096, help="tokens in the vocabulary")
    train.add_argument("--min-frequency", type=int, default=2, help="minimum pair count to merge")
    train.add_argument("--out", default="tokenizer.json", help="file to write")
    train.add_argument("--glob", default="**/*.txt", help="file pattern inside directories")
    train.add_argument("--text-field", default="text", help="the text field of JSON / Parquet / datasets sources")
    train.add_argument("--sample-mb", type=float, default=0,
                       help="train on the first N MB of text only (default 0: all of it, streamed)")

    encode = sub.add_parser("encode", help="print the token ids and pieces of a text")
    encode.add_argument("tokenizer", help="tokenizer.json, or a directory with it or GPT-2's encoder.json + vocab.bpe")
    encode.add_argument("--text", required=True, help="text to encode")

    parser.set_defaults(func=run)
    return parser


def _show(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    print(f"text:   {text!r}")
    print(f"ids:    {ids}  ({len(ids)} tokens, {len(text.encode('utf-8'))} bytes)")
    print(f"pieces: {tok.token_strings(ids)}")


def run(args: argparse.Namespace) -> int:
    """Run ``tokenizer train`` or ``tokenizer encode``."""
    if args.action == "encode":
        _show(Tokenizer.load(args.tokenizer), args.text)
        return 0
    shown: list[str] = []  # a line of the text, shown encoded at the end

    def texts():  # streamed: the corpus is never held in memory
        for path in args.paths:
            for _, text in iter_documents(path, args.glob, args.text_field):
                if not shown:
                    shown.append(next((ln.strip() for ln in text[:10_000].splitlines() if len(ln.strip()) > 20),
                                      text[:60]))
                yield text

    tok = Tokenizer.train_bpe(texts(), args.vocab_size, min_frequency=args.min_frequency,
                              sample_mb=args.sample_mb, progress=sys.stderr.isatty())
    out = tok.save(args.out)
    print(f"trained on {tok.trained_on.describe()}; vocab size {tok.vocab_size}; wrote {out}")
    _show(tok, shown[0][:80])
    return 0
