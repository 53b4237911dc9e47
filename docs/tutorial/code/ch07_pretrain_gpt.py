"""Chapter 7: pretrain a small GPT on the embedded Shakespeare, then generate (greedy, sampling, beam).

Run: .venv/bin/python docs/tutorial/code/ch07_pretrain_gpt.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from attnlab import config
from attnlab.data import Tokenizer, read_documents
from attnlab.generate import generate
from attnlab.train import load_model, train

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "figures"
CORPUS_CHARS = 300_000  # the first plays of the embedded corpus: enough for a tiny model in seconds
STEPS = 150
PROMPT = "Ham.\nWhat say you"


def tiny_gpt_config(run_dir: Path, corpus: Path, cache: Path) -> config.Config:
    """gpt-tiny, shrunk to 2 layers of width 128 on 64-token windows so that it trains in ~30 s on a CPU."""
    return config.load("gpt-tiny", [
        f"data.source={corpus}", "data.tokenizer=bpe:1024", f"data.cache_dir={cache}",
        "model.vocab_size=0", "model.block_size=64", "model.n_layer=2", "model.n_head=4", "model.d_model=128",
        f"train.out_dir={run_dir}", "train.batch_size=16", "train.seq_len=64", f"train.max_steps={STEPS}",
        "train.optimizer=adamw", "train.warmup_steps=20", "train.lr=3e-3", "train.min_lr=3e-4", "train.eval_every=50",
        "train.eval_batches=8", "train.ckpt_every=0", "train.log_every=5", "train.device=cpu", "train.seed=0",
    ])


def plot_curve(metrics_file: Path, baseline: float, path: Path) -> None:
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    train_pts = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val_pts = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(*zip(*train_pts, strict=False), label="train loss")
    ax.plot(*zip(*val_pts, strict=False), "o-", label="validation loss")
    ax.axhline(baseline, ls="--", color="gray", label=f"unigram entropy {baseline:.2f}")
    ax.set(xlabel="step", ylabel="nats / token", title="Pretraining a 2-layer GPT on Shakespeare")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out_dir: Path) -> dict:
    torch.set_num_threads(1)  # one thread: reproducible timings, and no slowdown on a busy 2-core machine
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "shakespeare-head.txt"
        corpus.write_text(read_documents("builtin:shakespeare")[0][1][:CORPUS_CHARS])
        cfg = tiny_gpt_config(tmp / "run", corpus, tmp / "cache")
        summary = train(cfg, progress=False, log=print)
        print(f"trained {summary['step']} steps: val loss {summary['val_loss']:.3f} (ppl {summary['val_ppl']:.1f}), "
              f"unigram entropy {summary['unigram_entropy']:.3f}, {summary['tokens_per_s']:,.0f} tokens/s "
              f"({time.time() - t0:.1f} s)")
        plot_curve(tmp / "run" / "metrics.jsonl", summary["unigram_entropy"], out_dir / "ch07_loss.png")

        model, _ = load_model(tmp / "run")
        tok = Tokenizer.load(tmp / "run" / "tokenizer.json")
    prompt = torch.tensor([tok.encode(PROMPT)])  # (1, T)
    decodings = {
        "greedy": dict(temperature=0.0),
        "sample T=1.0": dict(temperature=1.0, seed=0),
        "sample T=0.7, top-k 40": dict(temperature=0.7, top_k=40, seed=0),
        "sample T=1.0, top-p 0.9": dict(temperature=1.0, top_p=0.9, seed=0),
        "beam search, 4 beams": dict(num_beams=4),
    }
    texts = {}
    for name, kwargs in decodings.items():
        out = generate(model, prompt, 40, **kwargs)  # (1, T + 40)
        texts[name] = tok.decode(out[0, prompt.shape[1]:].tolist())
        distinct = len(set(out[0, prompt.shape[1]:].tolist())) / (out.shape[1] - prompt.shape[1])
        print(f"\n--- {name} (distinct tokens {distinct:.0%}) ---\n{PROMPT}{texts[name]}")
    print(f"\nwrote ch07_loss.png ({time.time() - t0:.1f} s)")
    return {"val_loss": summary["val_loss"], "val_ppl": summary["val_ppl"],
            "unigram_entropy": summary["unigram_entropy"], "texts": texts}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the figures")
    main(parser.parse_args().out)
