"""``attnlab eval RUN --suite instruct``: a chat model's replies scored per task, and its preference accuracy.

    attnlab eval runs/chat-sft --suite instruct --data data/instruct/test.jsonl
    attnlab eval runs/chat-sft --suite instruct --data data/instruct/test.jsonl --limit 50 --max-new-tokens 96
    attnlab eval runs/chat-dpo --suite instruct --preferences data/prefs/test.jsonl --out results/dpo.json

The model is loaded as ``attnlab chat`` loads it (:func:`attnlab.cli._chat.load_chat_model`: a
fine-tuned run or an ``attnlab train`` run, with its chat template) and answers each prompt in a
fresh :class:`attnlab.generate.chat.ChatSession`, greedily, so a run is reproducible.
Scoring is :mod:`attnlab.eval.instruct`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SUITES = ("instruct",)
DEFAULT_MAX_NEW_TOKENS = 128
"""Reply budget: a seven-character lüshi is 64 characters, and a CJK character may take 2-3 byte-level tokens."""
_PRETRAINING_FLAGS = {"rope_scaling": "--rope-scaling", "rope_factor": "--rope-factor", "split": "--split"}
_INSTRUCT_FLAGS = {"preferences": "--preferences", "limit": "--limit", "max_new_tokens": "--max-new-tokens",
                   "out": "--out", "quantize": "--quantize"}


def add_instruct_flags(p: argparse.ArgumentParser) -> None:
    """The ``--suite instruct`` options of ``attnlab eval``."""
    from attnlab.generate.quantize import QUANTIZE

    p.add_argument("--suite", choices=SUITES, default=None,
                   help="instruct: evaluate a chat model on --data (instruct test.jsonl) and/or --preferences")
    p.add_argument("--preferences", default=None, metavar="FILE",
                   help="--suite instruct: preference pairs (test.jsonl of `attnlab data prepare preferences`) "
                   "to score by log-probability")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="--suite instruct: at most N prompts per task (the first in the file; default: all)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"--suite instruct: reply length cap in tokens (default: {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="--suite instruct: write the results, every reply included, as JSON to FILE")
    p.add_argument("--quantize", default=None, choices=QUANTIZE,
                   help="--suite instruct: int8 weight-only linears, as in attnlab generate (default: none)")


def check_no_instruct_flags(args: argparse.Namespace) -> None:
    """Refuse the ``--suite instruct`` options when no suite is asked for (they would be ignored)."""
    from attnlab.errors import AttnlabError

    given = [flag for name, flag in _INSTRUCT_FLAGS.items() if getattr(args, name) is not None]
    if given:
        raise AttnlabError(f"{', '.join(given)} apply to --suite instruct only; add --suite instruct or drop them")


def _check_args(args: argparse.Namespace) -> None:
    from attnlab.errors import AttnlabError

    given = [flag for name, flag in _PRETRAINING_FLAGS.items() if getattr(args, name) is not None]
    if args.seq_len:
        given.append("--seq-len")
    if given:
        raise AttnlabError(f"{', '.join(given)} do not apply to --suite instruct; drop them")
    if args.data is None and args.preferences is None:
        raise AttnlabError("--suite instruct needs --data FILE (instruct test.jsonl) and/or --preferences FILE")
    for flag, value in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise AttnlabError(f"{flag} must be an integer >= 1, got {value}")


def _single_turn(records: list[Any]) -> None:
    """Every prompt is one user turn (after an optional system prompt): what a fresh chat session asks."""
    from attnlab.errors import AttnlabError
    from attnlab.eval.instruct import split_record

    for rec in records:
        prompt, _ = split_record(rec)
        turns = prompt[1:] if prompt[0]["role"] == "system" else prompt
        if len(turns) != 1:
            raise AttnlabError(f"{rec.where}: --suite instruct asks single-turn prompts (a system prompt and one user "
                               f"turn), this one has {len(turns)} turns; split the conversation or remove the line")


def _reply_fn(model: Any, tokenizer: Any, template: Any, max_new_tokens: int):
    """``messages → reply``: one fresh greedy :class:`ChatSession` turn per prompt (one session per system prompt)."""
    from attnlab.generate.chat import ChatSession
    from attnlab.generate.config import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    sessions: dict[str | None, Any] = {}

    def reply(messages: list[dict[str, str]]) -> str:
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        session = sessions.get(system)
        if session is None:
            session = sessions[system] = ChatSession(model, tokenizer, template, sampling, system=system)
        session.reset()
        return session.reply(messages[-1]["content"])

    return reply


def _table(res: dict[str, Any]) -> str:
    rows = [f"{'task':<18} {'n':>6}  {'main':<12} {'value':>8}  other metrics"]
    for task, scores in res["tasks"].items():
        main = res["headline_metric"][task]
        others = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k not in (main, "n"))
        rows.append(f"{task:<18} {scores['n']:>6}  {main:<12} {scores[main]:>8.4f}  {others}")
    return "\n".join(rows)


def _preferences_lines(pref: dict[str, Any]) -> str:
    rows = [f"preferences: accuracy {pref['accuracy']:.4f}, mean margin {pref['margin']:+.3f} nats over "
            f"{pref['n']:,} pairs" + (f" ({pref['truncated']} prompts cut to fit the context)" if pref["truncated"]
                                      else "")]
    rows += [f"  {task:<18} {s['n']:>6}  accuracy {s['accuracy']:.4f}, margin {s['margin']:+.3f}"
             for task, s in pref["tasks"].items()]
    return "\n".join(rows)


def run_instruct(args: argparse.Namespace) -> int:
    """Load the chat model, run the suite and/or the preference pairs, print (and write) the results."""
    from attnlab.cli import _chat
    from attnlab.data.chat import template_name
    from attnlab.data.chat_data import read_conversations, read_preferences
    from attnlab.eval.instruct import group_by_task, preference_accuracy, run_suite
    from attnlab.io.durable import atomic_write_text

    _check_args(args)
    # Read and check the data before loading the model, so a bad file fails at once.
    groups = group_by_task(read_conversations(args.data), args.limit) if args.data else {}
    records = [r for recs in groups.values() for r in recs]
    _single_turn(records)
    pairs = read_preferences(args.preferences) if args.preferences else []
    max_new = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    model, tok, template, _device, weights = _chat.load_chat_model(args.checkpoint, args.device, args.dtype,
                                                                      args.quantize or "none")
    print(weights.line(), file=sys.stderr)
    out: dict[str, Any] = {"model": str(args.checkpoint), "template": template_name(template),
                           "weights": weights.line(), "max_new_tokens": max_new, "limit": args.limit}
    if records:
        out["data"] = str(args.data)
        out.update(run_suite(records, _reply_fn(model, tok, template, max_new)))
    if pairs:
        out["preferences_data"] = str(args.preferences)
        out["preferences"] = preference_accuracy(model, tok, template, pairs, batch_size=args.batch_size)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "replies"}, ensure_ascii=False))
        return 0
    print(f"{args.checkpoint} ({out['template']}; greedy, at most {max_new} new tokens)")
    if records:
        print(f"{args.data}: {len(records):,} prompts")
        print(_table(out))
    if pairs:
        print(_preferences_lines(out["preferences"]))
    if args.out:
        print(f"results: {args.out}")
    return 0
