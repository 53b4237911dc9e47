"""Chat training data: conversations for supervised fine-tuning, preference pairs for DPO.

Conversation files are JSON Lines (or a ``.json`` list), one conversation per record, in any
of three common shapes, all read into ``[{"role", "content"}, ...]``:

- OpenAI: ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}``
- ShareGPT: ``{"conversations": [{"from": "system" | "human" | "gpt", "value": "..."}, ...]}``
- Alpaca: ``{"instruction": "...", "input": "...", "output": "..."}`` (``input`` optional;
  instruction and input become one user turn, output the assistant turn)

Preference files hold ``{"prompt", "chosen", "rejected"}`` records: ``prompt`` is a string (one
user turn) or a list of messages; ``chosen`` / ``rejected`` are the two replies (strings, or a
single assistant message). Other fields (``task``, ``lang``, ``reference``...) are kept in
``meta``. Every problem is reported as ``FILE line N: what is wrong``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlab.data.chat import Message, check_conversation
from attnlab.data.tasks import _open_text
from attnlab.errors import AttnlabError

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass
class Conversation:
    """One conversation read from a file.

    Attributes:
        messages: ``[{"role", "content"}, ...]``.
        where: ``"FILE line N"``, for messages about it.
        meta: the record's other fields (``task``, ``lang``, ``reference``, ...).
    """

    messages: list[Message]
    where: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreferencePair:
    """A prompt and two replies, ``chosen`` preferred to ``rejected``.

    Attributes:
        prompt: the conversation so far (ends with a user turn).
        chosen: the preferred assistant reply.
        rejected: the other reply.
        where: ``"FILE line N"``.
        meta: the record's other fields.
    """

    prompt: list[Message]
    chosen: str
    rejected: str
    where: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def read_json_records(path: str | Path) -> list[tuple[str, Any]]:
    """``[("FILE line N", record), ...]`` of a JSON Lines file (or ``"FILE record N"`` of a ``.json`` list).

    Raises:
        AttnlabError: missing file, invalid JSON (with its line), or no records.
    """
    p = Path(path)
    if not p.is_file():
        raise AttnlabError(f"data file '{p}' not found; check the path (data.train / data.val / data.test)")
    out: list[tuple[str, Any]] = []
    try:
        with _open_text(p) as f:
            if ".json" in p.suffixes and ".jsonl" not in p.suffixes:
                data = json.load(f)
                if not isinstance(data, list):
                    raise AttnlabError(f"'{p}' must hold a JSON list of records (or use JSON Lines, .jsonl)")
                out = [(f"{p} record {i}", r) for i, r in enumerate(data, 1)]
            else:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        out.append((f"{p} line {i}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise AttnlabError(f"{p} line {i}: not valid JSON ({e.msg}); fix or remove the line") from None
    except (UnicodeDecodeError, OSError, EOFError, json.JSONDecodeError) as e:
        raise AttnlabError(f"'{p}' cannot be read as JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not out:
        raise AttnlabError(f"'{p}' holds no records")
    return out


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise AttnlabError(f"{where}: '{name}' must be a string, got {type(value).__name__}")
    return value


def to_messages(record: Any, where: str) -> list[Message]:
    """The messages of one record in any of the three shapes (see the module docstring).

    Raises:
        AttnlabError: not an object, no known shape, an unknown role, a non-string content.
    """
    if not isinstance(record, dict):
        raise AttnlabError(f"{where}: a conversation must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return check_conversation(record["messages"], where)
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise AttnlabError(f"{where}: 'conversations' must be a list of {{from, value}} objects")
        msgs = []
        for j, t in enumerate(turns, 1):
            if not isinstance(t, dict) or t.get("from") not in SHAREGPT_ROLES:
                who = t.get("from") if isinstance(t, dict) else t
                raise AttnlabError(f"{where}: turn {j} has unknown 'from' {who!r}; use one of "
                                   f"{', '.join(SHAREGPT_ROLES)}")
            msgs.append({"role": SHAREGPT_ROLES[t["from"]], "content": t.get("value")})
        return check_conversation(msgs, where)
    if "instruction" in record and "output" in record:
        prompt = _text(record["instruction"], where, "instruction")
        extra = _text(record.get("input") or "", where, "input")
        user = f"{prompt}\n\n{extra}" if extra else prompt
        return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], where,
                                                                                           "output")}]
    raise AttnlabError(f"{where}: no conversation found; give 'messages' (OpenAI), 'conversations' (ShareGPT) "
                       "or 'instruction' + 'output' (Alpaca)")


def read_conversations(path: str | Path) -> list[Conversation]:
    """Every conversation of a file, checked; each has at least one assistant turn.

    Raises:
        AttnlabError: ``FILE line N`` and the problem (see :func:`to_messages`; no assistant turn).
    """
    out = []
    for where, rec in read_json_records(path):
        msgs = to_messages(rec, where)
        if not any(m["role"] == "assistant" for m in msgs):
            raise AttnlabError(f"{where}: the conversation has no assistant turn, so there is nothing to learn; "
                               "add the assistant's reply or remove the line")
        meta = {k: v for k, v in rec.items() if k not in ("messages", "conversations", "instruction", "input",
                                                          "output")}
        out.append(Conversation(msgs, where, meta))
    return out


def _reply(value: Any, where: str, name: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        if value.get("role") != "assistant":
            raise AttnlabError(f"{where}: '{name}' must be an assistant reply, got role {value.get('role')!r}")
        value = value.get("content")
    return _text(value, where, name)


def read_preferences(path: str | Path) -> list[PreferencePair]:
    """Every preference pair of a file, checked.

    Raises:
        AttnlabError: ``FILE line N`` and the problem: a missing field, a prompt that does not end with
            a user turn, or ``chosen`` equal to ``rejected`` (the pair teaches nothing).
    """
    out = []
    for where, rec in read_json_records(path):
        if not isinstance(rec, dict) or not all(k in rec for k in ("prompt", "chosen", "rejected")):
            raise AttnlabError(f"{where}: a preference pair needs 'prompt', 'chosen' and 'rejected'")
        prompt = rec["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        prompt = check_conversation(prompt, where)
        if prompt[-1]["role"] != "user":
            raise AttnlabError(f"{where}: the prompt must end with a user turn, not {prompt[-1]['role']}")
        chosen, rejected = _reply(rec["chosen"], where, "chosen"), _reply(rec["rejected"], where, "rejected")
        if chosen == rejected:
            raise AttnlabError(f"{where}: 'chosen' equals 'rejected', so the pair teaches nothing; fix or remove it")
        meta = {k: v for k, v in rec.items() if k not in ("prompt", "chosen", "rejected")}
        out.append(PreferencePair(prompt, chosen, rejected, where, meta))
    return out
