"""Chapter 4: self vs cross attention, additive vs multiplicative scores, and an RNN seq2seq with attention.

1. ``MultiHeadAttention`` attends a sequence to itself (self attention) or to another
   sequence passed as ``context`` (cross attention): the weight matrix is Tq × Tq or Tq × Tk.
2. The classic score functions of ``attnlab.attention.scoring``: dot and scaled dot
   (no parameters), general/multiplicative (Luong, qᵀWk) and additive (Bahdanau,
   vᵀ tanh(W_q q + W_k k)).
3. ``attnlab.models.rnn.Seq2SeqRNN`` learns a toy translation: English digit words to
   French digit words in reverse order. Its attention weights form the alignment matrix.

    .venv/bin/python docs/tutorial/code/ch04_self_vs_cross.py --out docs/tutorial/figures
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attnlab.attention import MultiHeadAttention, attend, build_scoring  # noqa: E402
from attnlab.generate import generate  # noqa: E402
from attnlab.models.rnn import Seq2SeqConfig, Seq2SeqRNN  # noqa: E402

PAD, BOS, EOS = 0, 1, 2  # special ids; digit d has id d + 3 on both sides
EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FR = ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"]
VOCAB, LENGTH, STEPS = 13, 7, 300


def self_vs_cross() -> dict:
    """Shapes of self- and cross-attention weights from one module."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, n_head=2)  # the same projections serve both uses here
    x = torch.randn(1, 4, 16)  # (B, Tq, d_model): 4 queries
    memory = torch.randn(1, 6, 16)  # (B, Tk, d_model): 6 tokens of another sequence
    _, w_self = mha(x, return_weights=True)  # keys and values from x itself
    _, w_cross = mha(x, memory, return_weights=True)  # keys and values from the context
    print(f"self attention : x {tuple(x.shape)} -> weights {tuple(w_self.shape)} (B, H, Tq, Tq)")
    print(f"cross attention: x {tuple(x.shape)}, context {tuple(memory.shape)} -> weights {tuple(w_cross.shape)}"
          " (B, H, Tq, Tk)")
    print(f"  rows sum to 1: {torch.allclose(w_cross.sum(-1), torch.ones(1, 2, 4))}")
    return {"self": list(w_self.shape), "cross": list(w_cross.shape)}


def compare_scorings() -> dict:
    """One decoder state (query) against five encoder states (keys), under each score function."""
    torch.manual_seed(0)
    d = 8
    query, keys = torch.randn(1, 1, d), torch.randn(1, 5, d)  # (B, 1, d), (B, Tk, d)
    print(f"{'scoring':>10} {'params':>6}  weights over 5 keys")
    result = {}
    for name in ("dot", "scaled_dot", "general", "additive"):
        score = build_scoring(name, d, d)
        _, w = attend(score(query, keys), keys)  # (B, 1, Tk)
        params = sum(p.numel() for p in score.parameters())
        print(f"{name:>10} {params:6d}  " + " ".join(f"{v:.3f}" for v in w[0, 0].tolist()))
        result[name] = {"params": params, "weights": w[0, 0].tolist()}
    return result


def translation_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source digits (as EN ids), decoder input (BOS + target) and decoder output (target + EOS)."""
    src = torch.randint(3, VOCAB, (n, LENGTH), generator=gen)  # (n, S)
    tgt = src.flip(1)  # French word order: reversed (the dictionary maps id d+3 to FR[d])
    bos = torch.full((n, 1), BOS)
    eos = torch.full((n, 1), EOS)
    return src, torch.cat((bos, tgt), 1), torch.cat((tgt, eos), 1)


def train_seq2seq(scoring: str, gen: torch.Generator) -> tuple[Seq2SeqRNN, float]:
    torch.manual_seed(0)
    model = Seq2SeqRNN(Seq2SeqConfig(VOCAB, VOCAB, d_emb=32, d_hidden=64, scoring=scoring, decoder_start_id=BOS))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(STEPS):
        src, tgt_in, tgt_out = translation_batch(64, gen)
        loss = F.cross_entropy(model(src, tgt_in).reshape(-1, VOCAB), tgt_out.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), loss.item()


def words(ids: list[int], table: list[str]) -> str:
    return " ".join(table[i - 3] for i in ids if i >= 3)


def draw_alignment(panels: list[tuple[str, torch.Tensor, list[str], list[str]]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4))
    for ax, (title, w, src_words, tgt_words) in zip(axes, panels, strict=False):
        ax.imshow(w.numpy(), cmap="Greys", vmin=0, vmax=1)
        ax.set_xticks(range(len(src_words)), src_words, rotation=45, ha="right")
        ax.set_yticks(range(len(tgt_words)), tgt_words)
        ax.set_xlabel("source (English)")
        ax.set_ylabel("output (French)")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = self_vs_cross()
    scorings = compare_scorings()

    gen = torch.Generator().manual_seed(0)
    test_src, _, test_out = translation_batch(256, torch.Generator().manual_seed(123))
    panels, accuracy = [], {}
    for scoring in ("additive", "general"):
        t0 = time.perf_counter()
        model, loss = train_seq2seq(scoring, gen)
        pred = generate(model, test_src, LENGTH + 1, temperature=0.0, eos_token_id=EOS)  # (B, 1 + ≤ L+1), BOS first
        got = pred[:, 1:LENGTH + 1]
        acc = (got == test_out[:, :LENGTH]).all(1).float().mean().item()
        accuracy[scoring] = acc
        print(f"{scoring:>8} attention: {STEPS} steps in {time.perf_counter() - t0:.1f} s, final loss {loss:.4f}, "
              f"exact-match accuracy on 256 new sentences {acc:.3f}")
        src = test_src[:1]
        with torch.no_grad():
            _, w = model(src, torch.cat((torch.full((1, 1), BOS), got[:1]), 1), return_weights=True)  # (1, T, S)
        src_words = words(src[0].tolist(), EN).split()
        tgt_words = words(got[0].tolist(), FR).split() + ["<eos>"]
        print(f"  {' '.join(src_words)}  ->  {' '.join(tgt_words[:-1])}")
        panels.append((f"{scoring} scoring: alignment (attention weights)", w[0, :len(tgt_words)], src_words,
                       tgt_words))
        anti = w[0, torch.arange(LENGTH), torch.arange(LENGTH - 1, -1, -1)].mean().item()
        print(f"  mean weight on the mirrored source word: {anti:.3f}")
    draw_alignment(panels, out_dir / "ch04_alignment.png")
    print(f"wrote {out_dir / 'ch04_alignment.png'}")
    return {"shapes": shapes, "scorings": scorings, "accuracy": accuracy}


def default_out() -> Path:
    return Path(__file__).resolve().parents[1] / "figures"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out(), help="folder for the figures")
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and does not fight other processes
    main(parser.parse_args().out)
