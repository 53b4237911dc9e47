"""Chapter 5: positional encodings — sinusoidal, learned, RoPE, ALiBi — and what breaks without them.

Attention compares every query with every key through q·k alone, so by itself it
does not know where a token sits: permute the input and the outputs are permuted the
same way. Position schemes put order back in one of three places (attnlab's
``build_positions``): vectors added to the embeddings (sinusoidal, learned), a rotation
of q and k (RoPE), or a bias on the scores (ALiBi).

The experiment trains the same small bidirectional encoder on an order-sensitive task —
output, at every position, the token one step to the right — with each scheme and with none.

    .venv/bin/python docs/tutorial/code/ch05_positions.py --out docs/tutorial/figures
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attnlab.attention import build_positions  # noqa: E402
from attnlab.config import ModelConfig  # noqa: E402
from attnlab.models import build  # noqa: E402

SCHEMES = ["none", "learned", "sinusoidal", "rope", "alibi"]
VOCAB, SEQ_LEN, STEPS = 16, 12, 300
ROPE_DISTANCES = [0, 1, 2, 4, 8, 16, 32, 64, 128]


def sinusoidal_figure(path: Path) -> dict:
    table = build_positions("sinusoidal", 128, 64, 16).embed(torch.arange(128))  # (P=128, D=64)
    sim = table @ table[32]  # (P,) PE[p] · PE[32]
    print("sinusoidal: PE[p]·PE[32] for p = 32, 33, 36, 48, 64:",
          " ".join(f"{sim[p].item():.2f}" for p in (32, 33, 36, 48, 64)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    im = axes[0].imshow(table[:64].T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    axes[0].set_xlabel("position p")
    axes[0].set_ylabel("dimension")
    axes[0].set_title("sinusoidal table PE[p, dim], p < 64")
    fig.colorbar(im, ax=axes[0])
    for dim in (8, 16, 32, 48):
        axes[1].plot(table[:, dim].numpy(), label=f"dim {dim}")
    axes[1].set_xlabel("position p")
    axes[1].set_title("one sine per pair of dimensions")
    axes[1].legend(fontsize=8)
    axes[2].plot(sim.numpy())
    axes[2].axvline(32, color="gray", ls=":")
    axes[2].set_xlabel("position p")
    axes[2].set_title("PE[p] · PE[32]: peaks at p = 32")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"dot_with_32": [sim[p].item() for p in (32, 33, 36, 48, 64)]}


def rope_scores() -> tuple[torch.Tensor, float]:
    """q·k after RoPE for q = k = (1, ..., 1) at every pair of positions; and the shift-invariance error."""
    rope = build_positions("rope", 256, 64, 64)  # max_len, d_model, head_dim
    ones = torch.ones(1, 1, 256, 64)  # (B, H, T, D)
    q, k = rope.rotary(torch.arange(256))(ones, ones)  # each (1, 1, T, D), rotated by its position
    scores = q[0, 0] @ k[0, 0].T  # (T, T): scores[m, n] = q_m · k_n
    shifted = (scores[10:, 10] - scores[:-10, 0]).abs().max().item()  # same distance, positions moved by 10
    return scores, shifted


def alibi_bias() -> tuple[torch.Tensor, torch.Tensor]:
    alibi = build_positions("alibi", 8, 64, 16, n_head=4, bidirectional=False)
    bias = alibi.score_mod().apply_dense(torch.zeros(1, 4, 8, 8))[0]  # (H, Tq, Tk): -slope·(i - j)
    return bias, alibi.slopes


def rope_alibi_figure(scores: torch.Tensor, bias: torch.Tensor, slopes: torch.Tensor, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(scores[:, 0].numpy())
    axes[0].set_xlabel("distance m - n")
    axes[0].set_title("RoPE: q·k for q = k = 1 (d=64)")
    causal = np.tril(np.ones((8, 8), dtype=bool))
    for ax, h in ((axes[1], 0), (axes[2], 3)):
        b = np.where(causal, bias[h].numpy(), np.nan)
        ax.imshow(b, cmap="Reds_r", vmin=bias[h].min().item(), vmax=0)
        for i in range(8):
            for j in range(i + 1):
                ax.text(j, i, f"{b[i, j]:.3f}" if h == 3 else f"{b[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("key j")
        ax.set_ylabel("query i")
        ax.set_title(f"ALiBi bias, head {h} (slope {slopes[h].item():g})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def shift_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens x (n, T); target at position i is x[i + 1] (wrapping around)."""
    x = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=gen)
    return x, x.roll(-1, dims=1)


def train_shift(position: str) -> tuple[float, float]:
    """Train a 2-layer bidirectional encoder with this position scheme; return (final loss, test accuracy)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig(arch="encoder", vocab_size=VOCAB, block_size=SEQ_LEN, n_layer=2, n_head=4, d_model=64,
                      position=position)
    model = build(cfg)
    # Start token and learned position vectors at unit scale, like the sinusoids, so that
    # neither drowns the other in the sum (BERT's init uses std 0.02).
    for name, p in model.encoder.named_parameters():
        if name in ("tok_emb.weight", "pos.weight"):
            torch.nn.init.normal_(p, std=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(STEPS):
        x, y = shift_batch(64, gen)
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = shift_batch(512, torch.Generator().manual_seed(1))
    with torch.no_grad():
        acc = (model.eval()(x).argmax(-1) == y).float().mean().item()
    return loss.item(), acc


def accuracy_figure(acc: dict[str, float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bars = ax.bar(list(acc), list(acc.values()), color=["tab:red"] + ["tab:blue"] * (len(acc) - 1))
    ax.bar_label(bars, fmt="%.2f")
    ax.axhline(1 / VOCAB, color="gray", ls=":", label=f"chance 1/{VOCAB}")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy")
    ax.set_title("'output the token to your right', bidirectional encoder")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"sinusoidal": sinusoidal_figure(out_dir / "ch05_sinusoidal.png")}

    scores, shift_err = rope_scores()
    print("RoPE: q·k at distance", " ".join(f"{d}:{scores[d, 0].item():.1f}" for d in ROPE_DISTANCES))
    print(f"RoPE: max |score(m+10, n+10) - score(m, n)| = {shift_err:.1e}  (only m - n matters)")
    bias, slopes = alibi_bias()
    print("ALiBi slopes per head:", " ".join(f"{s:g}" for s in slopes.tolist()))
    print("ALiBi bias of head 0 (query 7 to keys 0..7):", " ".join(f"{b:.2f}" for b in bias[0, 7].tolist()))
    rope_alibi_figure(scores, bias, slopes, out_dir / "ch05_rope_alibi.png")
    result["rope"] = {"scores": [scores[d, 0].item() for d in ROPE_DISTANCES], "shift_error": shift_err}

    acc = {}
    print(f"{'position':>10} {'loss':>6} {'accuracy':>8} {'seconds':>7}")
    for scheme in SCHEMES:
        t0 = time.perf_counter()
        loss, acc[scheme] = train_shift(scheme)
        print(f"{scheme:>10} {loss:6.3f} {acc[scheme]:8.3f} {time.perf_counter() - t0:7.1f}")
    accuracy_figure(acc, out_dir / "ch05_without_positions.png")
    for name in ("ch05_sinusoidal.png", "ch05_rope_alibi.png", "ch05_without_positions.png"):
        print(f"wrote {out_dir / name}")
    result["accuracy"] = acc
    return result


def default_out() -> Path:
    return Path(__file__).resolve().parents[1] / "figures"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out(), help="folder for the figures")
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and does not fight other processes
    main(parser.parse_args().out)
