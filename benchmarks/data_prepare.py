"""Data preparation at scale: throughput, peak memory and kill-and-resume on a generated JSON Lines corpus.

Generates a JSON Lines corpus of ``--size-mb`` MB (pseudo-words with a Zipf-like frequency, documents
of 2 to 60 lines; written to a temporary folder, never committed), trains one BPE tokenizer
(``--vocab``) on its first ``--sample-mb`` MB, then, each in its own subprocess:

1. ``ours``: ``attnlab.data.prepare`` (``data.num_proc=--num-proc``) with that tokenizer: wall time,
   text MB/s, peak RSS of the main process and of the largest worker (``ru_maxrss``);
2. ``datasets``: ``datasets.load_dataset("json")`` then ``Dataset.map(batched=True,
   num_proc=--num-proc)`` with the same tokenizer's ``encode_batch``, on the same file: the
   same measures (load + map, and map alone);
3. ``kill + resume``: ``prepare`` again into an empty cache, killed with SIGKILL as soon as its
   committed progress (``progress.json``) passes half of the documents, mid-way through the next
   shard, then rerun to the end; its shards' sha256 must equal those of run 1.

Runs 1 and 2 alternate for ``--rounds`` rounds (medians reported). Results are appended to
``results/data_prepare-cpu.{json,md}``.

    python benchmarks/data_prepare.py                  # 2 GB: the recorded run
    python benchmarks/data_prepare.py --size-mb 200    # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

OURS = textwrap.dedent("""
    import json, resource, sys, time
    from attnlab.config import DataConfig
    from attnlab.data import prepare
    src, tok, root, num_proc, shard_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    t0 = time.perf_counter()
    data = prepare(DataConfig(source=src, tokenizer=tok, val_fraction=0.005, num_proc=num_proc),
                   cache_root=root, progress=False, **({"shard_tokens": shard_tokens} if shard_tokens else {}))
    print(json.dumps({"seconds": time.perf_counter() - t0, "dir": str(data.dir),
                      "tokens": len(data.train) + len(data.val), "text_bytes": data.meta["train"]["n_bytes"]
                      + data.meta["val"]["n_bytes"], "shards": len(data.meta["shards"]["train"]),
                      "resumed_after_documents": data.meta["resumed_after_documents"],
                      "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
""")

DATASETS = textwrap.dedent("""
    import json, resource, sys, time
    import datasets
    from attnlab.data.tokenizer import Tokenizer
    src, tok_path, cache, num_proc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    datasets.disable_progress_bars()
    tok = Tokenizer.load(tok_path)
    def encode(batch):
        return {"ids": tok.encode_batch(batch["text"])}
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=src, split="train", cache_dir=cache)
    t1 = time.perf_counter()
    out = ds.map(encode, batched=True, num_proc=num_proc, remove_columns=ds.column_names)
    t2 = time.perf_counter()
    n = sum(len(x) for b in out.iter(batch_size=10000) for x in b["ids"])
    print(json.dumps({"seconds": t2 - t0, "load_seconds": t1 - t0, "map_seconds": t2 - t1, "tokens": n,
                      "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
""")


def generate(path: Path, size_mb: float, seed: int = 0) -> tuple[int, int]:
    """Write a JSON Lines corpus of about ``size_mb`` MB; returns (documents, bytes)."""
    rng = np.random.default_rng(seed)
    syll = ["ka", "to", "ri", "en", "sha", "mo", "lu", "ve", "an", "or", "thi", "ne", "sa", "pe", "du", "il"]
    words = np.array(["".join(rng.choice(syll, size=rng.integers(1, 4))) for _ in range(20000)])
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()  # Zipf-like word frequencies
    cdf = np.cumsum(p)
    pool = []  # 4096 generated documents, written in a random order with their own ids
    for _ in range(4096):
        n_lines = int(rng.integers(2, 60))
        lengths = rng.integers(4, 16, size=n_lines)
        ids = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), len(words) - 1)
        cuts = np.cumsum(lengths)[:-1]
        lines = [" ".join(ws).capitalize() + "." for ws in np.split(words[ids], cuts)]
        pool.append("\n".join(lines) + "\n")
    target, written, n = size_mb * 1e6, 0, 0
    with open(path, "w") as f:
        while written < target:
            line = json.dumps({"id": n, "text": pool[int(rng.integers(len(pool)))]}) + "\n"
            f.write(line)
            written += len(line)
            n += 1
    return n, written


def run(script: str, *args: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (peak RSS: the largest of all runs)."""
    mid = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return {**mid, "rss_main_mb": max(r["rss_main_mb"] for r in runs),
            "rss_worker_mb": max(r["rss_worker_mb"] for r in runs)}


def shard_sums(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.glob("*.bin")):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[p.name] = h.hexdigest()
    return out


def kill_and_resume(ours: list[str], root: Path, n_docs: int, env: dict[str, str]) -> dict:
    """Start ``prepare`` into ``root``, SIGKILL it at its first commit past half the documents, rerun it."""
    args = [*ours[:2], str(root), *ours[2:]]
    proc = subprocess.Popen([sys.executable, "-c", OURS, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done, t0 = 0, time.perf_counter()
    while proc.poll() is None and done < n_docs // 2:
        time.sleep(0.1)
        for p in root.glob(".partial-*/progress.json"):
            try:
                done = json.loads(p.read_text())["docs_done"]
            except (OSError, ValueError, KeyError):  # being replaced
                pass
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)  # the main process only, mid-shard: its workers notice and exit
    proc.wait()
    killed_after = time.perf_counter() - t0
    killed = proc.returncode == -signal.SIGKILL
    res = run(OURS, *args, env=env)
    return {"killed": killed, "killed_after_s": round(killed_after, 1), "committed_documents_at_kill": done, **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=float, default=2048, help="corpus size in MB (default 2048)")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--sample-mb", type=float, default=20, help="MB of the corpus the tokenizer is trained on")
    ap.add_argument("--rounds", type=int, default=1, help="alternated rounds of both (medians reported)")
    ap.add_argument("--shard-tokens", type=int, default=0, help="prepare's shard_tokens (0: its default)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    sys.path.insert(0, str(ROOT / "src"))
    from attnlab.data.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        src = work / "corpus.jsonl"
        t0 = time.perf_counter()
        n_docs, n_bytes = generate(src, args.size_mb)
        print(f"generated {n_bytes / 1e6:.0f} MB, {n_docs:,} documents in {time.perf_counter() - t0:.0f} s")

        def sample():
            used = 0
            with open(src) as f:
                for line in f:
                    used += len(line)
                    if used > args.sample_mb * 1e6:
                        return
                    yield json.loads(line)["text"]

        tok_path = Tokenizer.train_bpe(sample(), args.vocab).save(work / "tokenizer.json")
        mb = n_bytes / 1e6
        ours_args = [str(src), str(tok_path), str(args.num_proc), str(args.shard_tokens)]
        ours_runs, their_runs = [], []
        for r in range(args.rounds):  # alternated, so that a noisy neighbour hits both alike
            shutil.rmtree(work / "ours", ignore_errors=True)
            shutil.rmtree(work / "hf", ignore_errors=True)
            ours_runs.append(run(OURS, *ours_args[:2], str(work / "ours"), *ours_args[2:], env=env))
            their_runs.append(run(DATASETS, str(src), str(tok_path), str(work / "hf"), str(args.num_proc), env=env))
            o, t = ours_runs[-1], their_runs[-1]
            print(f"round {r + 1}: ours {mb / o['seconds']:.2f} MB/s, peak RSS {o['rss_main_mb']:.0f} MB (+ workers "
                  f"{o['rss_worker_mb']:.0f} MB); datasets {mb / t['seconds']:.2f} MB/s (map alone "
                  f"{mb / t['map_seconds']:.2f}), peak RSS {t['rss_main_mb']:.0f} MB")
        ours, theirs = median_run(ours_runs), median_run(their_runs)
        resumed = kill_and_resume(ours_args, work / "killed", n_docs, env)
        same = shard_sums(Path(resumed["dir"])) == shard_sums(Path(ours["dir"]))
        print(f"kill + resume: killed={resumed['killed']} after {resumed['killed_after_s']} s with "
              f"{resumed['committed_documents_at_kill']:,} documents committed, same shards: {same}")

    session = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)", "load_end": list(os.getloadavg()),
        "size_mb": round(mb, 1), "documents": n_docs, "num_proc": args.num_proc, "vocab": args.vocab,
        "shard_tokens": args.shard_tokens or "default",
        "rounds": args.rounds,
        "ours": {**ours, "mb_per_s": mb / ours["seconds"], "seconds_each": [round(r["seconds"], 1) for r in ours_runs]},
        "datasets_map": {**theirs, "mb_per_s": mb / theirs["seconds"], "map_mb_per_s": mb / theirs["map_seconds"],
                         "seconds_each": [round(r["seconds"], 1) for r in their_runs]},
        "speedup_vs_datasets": theirs["seconds"] / ours["seconds"],
        "kill_resume": {**resumed, "same_shards_as_uninterrupted": same},
        "note": args.note,
    }
    write_results(session)


def write_results(session: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "data_prepare-cpu.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"sessions": []}
    doc["sessions"].append(session)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    lines = ["# Data preparation: throughput, peak memory, kill and resume", "",
             "Written by `python benchmarks/data_prepare.py` (see its docstring): a generated JSON Lines corpus, "
             "`attnlab.data.prepare` against `datasets.load_dataset('json')` + `Dataset.map(batched=True, num_proc)` "
             "with the same tokenizer on the same file, each in its own subprocess; peak RSS is `ru_maxrss` of the "
             "main process (and of the largest worker); MB are 10^6 bytes of the JSON Lines file.", ""]
    for s in doc["sessions"]:
        o, d, k = s["ours"], s["datasets_map"], s["kill_resume"]
        lines += [f"## {s['date']}: {s['size_mb']:.0f} MB, {s['documents']:,} documents, num_proc {s['num_proc']}, "
                  f"bpe:{s['vocab']}, {s['machine']}, load average at the end {[round(x, 2) for x in s['load_end']]}",
                  "", f"Medians of {s.get('rounds', 1)} alternated round(s) (seconds each: ours "
                  f"{o.get('seconds_each')}, datasets {d.get('seconds_each')}).", "",
                  "| run | seconds | MB/s | × datasets | peak RSS main (MB) | peak RSS worker (MB) | tokens |",
                  "|---|---|---|---|---|---|---|",
                  f"| attnlab prepare | {o['seconds']:.1f} | {o['mb_per_s']:.2f} | {s['speedup_vs_datasets']:.2f} | "
                  f"{o['rss_main_mb']:.0f} | {o['rss_worker_mb']:.0f} | {o['tokens']:,} |",
                  f"| datasets load + map | {d['seconds']:.1f} | {d['mb_per_s']:.2f} | 1.00 | {d['rss_main_mb']:.0f} | "
                  f"{d['rss_worker_mb']:.0f} | {d['tokens']:,} |",
                  f"| (datasets map alone) | {d['map_seconds']:.1f} | {d['map_mb_per_s']:.2f} | | | | |", "",
                  f"Kill and resume (shard_tokens {s['shard_tokens']}): SIGKILL {k['killed_after_s']} s after the "
                  f"start, at the first commit past half the documents (killed: {k['killed']}, "
                  f"{k['committed_documents_at_kill']:,} of {s['documents']:,} documents committed); the rerun "
                  f"resumed after {k['resumed_after_documents']:,} and ended with "
                  f"{'the same' if k['same_shards_as_uninterrupted'] else 'DIFFERENT'} shards (sha256) as the "
                  f"uninterrupted run.", ""]
        if s.get("note"):
            lines += [s["note"], ""]
    (RESULTS / "data_prepare-cpu.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
