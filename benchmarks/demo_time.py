"""`make demo`'s training: wall time and validation bits/byte of recipes, back to back in one run.

Each variant runs ``attnlab train gpt-tiny`` (the demo's command) in a fresh folder with its
overrides, as a subprocess timed from start to exit; the data (tokenizer, token cache) is
prepared once beforehand, so no variant pays for it. Then the final checkpoint is evaluated
again in fp32 on the same validation windows as training's own validation
(``attnlab eval --dtype float32 --batch-size 16 --batches 40``), so recipes trained in
different precisions compare on one scale. Variants run in the order given, ``--repeats``
times round-robin (interleaved, so machine load hits them alike)::

    python benchmarks/demo_time.py                                  # before (today's recipe, fp32) vs the preset
    python benchmarks/demo_time.py --variant muon300="train.optimizer=muon train.max_steps=300" --only muon300

Every invocation is appended to ``results/demo-cpu.json``, and ``results/demo-cpu.md`` is
rewritten from it (all sessions, newest last).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from attnlab.config import load  # noqa: E402
from attnlab.data import prepare  # noqa: E402
from attnlab.precision import cpu_has_native_bf16  # noqa: E402

BEFORE = ("model.mlp=gelu train.optimizer=adamw train.max_steps=600 train.lr=2.0e-3 train.min_lr=1.0e-4 "
          "train.warmup_steps=50 train.batch_size=16 train.seq_len=128 train.eval_every=200 train.eval_batches=40 "
          "train.ckpt_every=100 train.dtype=float32")
"""``gpt-tiny`` before issue 15: its ``train:`` section in fp32 (the CPU default then) and tanh GELU."""

VARIANTS = {"before": BEFORE, "preset": ""}
RESULTS = ROOT / "benchmarks" / "results"


def _r4(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _f4(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.4f}"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "attnlab", *args]


def run_variant(name: str, overrides: str, workdir: Path, fp32_eval: bool = True) -> dict[str, Any]:
    """Train ``gpt-tiny`` with ``overrides``, then (``fp32_eval``) re-evaluate its checkpoint in fp32."""
    out = workdir / name
    cmd = _cli("train", "gpt-tiny", f"train.out_dir={out}", "--no-progress", *shlex.split(overrides))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)  # the run's CPU seconds, all threads
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [r for r in records if "val_loss" in r][-1]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    fp32: dict[str, Any] = {"loss": None, "bpb": None}
    if fp32_eval:
        ev = subprocess.run(_cli("eval", str(out), "--dtype", "float32", "--batch-size", "16", "--batches", "40",
                                 "--json"), capture_output=True, text=True, env=env, cwd=ROOT)
        if ev.returncode != 0:
            raise SystemExit(f"eval of {name} failed: {ev.stderr.strip()[-500:]}")
        fp32 = json.loads(ev.stdout)
    precision_line = next((line for line in proc.stdout.splitlines() if line.startswith("precision:")), "")
    row = {"variant": name, "overrides": overrides, "command": "attnlab train gpt-tiny " + overrides,
           "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "steps": val["step"],
           "val_loss": round(val["val_loss"], 4),
           "val_bpb": round(val["val_bpb"], 4), "val_loss_fp32": _r4(fp32["loss"]),
           "val_bpb_fp32": _r4(fp32["bpb"]), "precision": val.get("precision", "?"),
           "precision_line": precision_line,
           "tokens_per_s_median": round(sorted(speeds)[len(speeds) // 2]) if speeds else None}
    print(json.dumps(row), flush=True)
    return row


def _table(session: dict[str, Any]) -> list[str]:
    rows = session["runs"]
    base = next((r for r in rows if r["variant"].startswith("before")), rows[0] if rows else None)
    lines = [f"## {session['date']} — {session['device']}, torch {session['torch']}, "
             f"native bf16: {session['native_bf16']}, load average at the end {session['load_end']}", "",
             "| variant | overrides | precision | steps | wall s | × before | CPU s | × before | val loss | val bpb | "
             "val loss (fp32 eval) | val bpb (fp32 eval) | tokens/s (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['wall_s'] / base['wall_s']:.2f}" if base else "–"
        cpu = f"{r['cpu_s']:.1f}" if "cpu_s" in r else "–"
        cpu_ratio = f"{r['cpu_s'] / base['cpu_s']:.2f}" if base and "cpu_s" in r and "cpu_s" in base else "–"
        lines.append(f"| {r['variant']} | `{r['overrides'] or '(preset as shipped)'}` | {r['precision']} "
                     f"| {r['steps']} | {r['wall_s']:.1f} | {ratio} | {cpu} | {cpu_ratio} "
                     f"| {r['val_loss']:.4f} | {r['val_bpb']:.4f} | "
                     f"{_f4(r['val_loss_fp32'])} | {_f4(r['val_bpb_fp32'])} | {r['tokens_per_s_median']} |")
    if session.get("note"):
        lines += ["", session["note"]]
    return lines + [""]


def write_md(sessions: list[dict[str, Any]], path: Path) -> None:
    """``results/demo-cpu.md`` from every recorded session."""
    head = ["# `make demo` training: wall time and validation bits/byte", "",
            "Written by `python benchmarks/demo_time.py` (see its docstring). Each row: `attnlab train gpt-tiny` "
            "with the overrides, a subprocess timed start to exit with the data already prepared (tokenizer and "
            "token cache), torch's default threads; `CPU s` is the subprocess' user + system CPU time (all threads; "
            "steadier than wall time on a shared machine); `val` is the run's own final validation (in the run's "
            "precision), "
            "`fp32 eval` the same 40 × 16 × 128 validation windows re-evaluated in fp32 "
            "(`attnlab eval RUN --dtype float32 --batch-size 16 --batches 40`). `before` is gpt-tiny before issue 15 "
            f"(tanh GELU, its old `train:` section, fp32): `{BEFORE}`. Rows of one session ran back to back "
            "(interleaved when repeated) on a 2-core machine shared with other jobs.", ""]
    body = [line for s in sessions for line in _table(s)]
    path.write_text("\n".join(head + body))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="an extra variant (space-separated train.* overrides on the preset)")
    p.add_argument("--only", nargs="*", default=None, help="run only these variants, in this order")
    p.add_argument("--repeats", type=int, default=1, help="rounds (variants interleaved)")
    p.add_argument("--no-fp32-eval", action="store_true", help="skip the fp32 re-evaluation (timing-only sessions)")
    p.add_argument("--note", default="", help="a sentence recorded with this session")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to results/")
    args = p.parse_args()
    variants = dict(VARIANTS)
    for v in args.variant:
        name, _, ov = v.partition("=")
        variants[name] = ov
    order = args.only if args.only is not None else list(variants)
    unknown = [n for n in order if n not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; define them with --variant NAME=OVERRIDES")
    prepare(load("gpt-tiny", []).data, progress=False)  # tokenizer + token cache, outside the timing
    runs = []
    with tempfile.TemporaryDirectory(prefix="demo_time_") as tmp:
        for rnd in range(args.repeats):
            for name in order:
                runs.append(run_variant(name, variants[name], Path(tmp) / f"r{rnd}", not args.no_fp32_eval))
    session = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "device": f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
               "torch": torch.__version__, "native_bf16": cpu_has_native_bf16(),
               "load_end": [round(x, 2) for x in os.getloadavg()], "note": args.note, "runs": runs}
    for line in _table(session):
        print(line)
    if not args.no_record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        jpath = RESULTS / "demo-cpu.json"
        sessions = json.loads(jpath.read_text())["sessions"] if jpath.exists() else []
        sessions.append(session)
        jpath.write_text(json.dumps({"sessions": sessions}, indent=1) + "\n")
        write_md(sessions, RESULTS / "demo-cpu.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
