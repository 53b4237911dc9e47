"""Chapter 1: attention from scratch — Q, K, V, scores, softmax weights, weighted sum.

A three-token worked example: we compute attention by hand with plain tensor
operations, then call attnlab's reference implementation
(``attention(..., backend="eager", return_weights=True)``) and check they agree.

    .venv/bin/python docs/tutorial/code/ch01_attention_from_scratch.py --out docs/tutorial/figures
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from attnlab.attention import attention, causal  # noqa: E402

TOKENS = ["the", "cat", "sat"]


def worked_example() -> dict[str, torch.Tensor]:
    """Three token vectors and three small projection matrices, chosen by hand."""
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0],   # "the"
                      [0.0, 1.0, 0.0, 1.0],   # "cat"
                      [1.0, 1.0, 1.0, 1.0]])  # "sat"   (T=3, d_model=4)
    w_q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # (4, 2)
    w_k = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # (4, 2)
    w_v = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # (4, 2)
    return {"x": x, "q": x @ w_q, "k": x @ w_k, "v": x @ w_v}  # each (T, d=2)


def by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores = q kᵀ / √d, weights = softmax(scores) row by row, output = weights · v."""
    d = q.shape[-1]
    scores = q @ k.T / math.sqrt(d)  # (Tq, Tk)
    exp = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)  # subtract the row max: same result, no overflow
    weights = exp / exp.sum(dim=-1, keepdim=True)  # (Tq, Tk), rows sum to 1
    return scores, weights, weights @ v  # output (Tq, d)


def show(name: str, t: torch.Tensor) -> None:
    print(f"{name} =")
    for row in t.tolist():
        print("   [" + "  ".join(f"{x:7.4f}" for x in row) + "]")


def draw(scores: torch.Tensor, weights: torch.Tensor, causal_weights: torch.Tensor, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    panels = [(scores, "scores  q·k/√d", "RdBu_r"), (weights, "weights  softmax(scores)", "Blues"),
              (causal_weights, "weights with a causal mask", "Blues")]
    for ax, (m, title, cmap) in zip(axes, panels, strict=False):
        ax.imshow(m.numpy(), cmap=cmap, vmin=-m.abs().max() if cmap == "RdBu_r" else 0.0,
                  vmax=m.abs().max() if cmap == "RdBu_r" else 1.0)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=10)
        ax.set_xticks(range(len(TOKENS)), TOKENS)
        ax.set_yticks(range(len(TOKENS)), TOKENS)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out_dir: Path) -> dict:
    torch.manual_seed(0)
    ex = worked_example()
    for name in ("x", "q", "k", "v"):
        show(name.upper() if name != "x" else "X (token vectors)", ex[name])
    scores, weights, out = by_hand(ex["q"], ex["k"], ex["v"])
    show("scores = Q Kᵀ / √2", scores)
    show("weights = softmax(scores)", weights)
    show("output = weights · V", out)
    print("row sums of weights:", [round(s, 6) for s in weights.sum(-1).tolist()])

    # The library's reference kernel takes (B, H, T, D) tensors.
    q, k, v = (ex[n][None, None] for n in ("q", "k", "v"))  # (1, 1, 3, 2)
    lib_out, lib_w = attention(q, k, v, backend="eager", return_weights=True)
    diff = max((lib_out[0, 0] - out).abs().max().item(), (lib_w[0, 0] - weights).abs().max().item())
    print(f"max |by hand - attnlab eager| = {diff:.2e}")

    _, causal_w = attention(q, k, v, mask=causal(), backend="eager", return_weights=True)
    show("weights with a causal mask", causal_w[0, 0])

    out_dir.mkdir(parents=True, exist_ok=True)
    draw(scores, weights, causal_w[0, 0], out_dir / "ch01_weights.png")
    print(f"wrote {out_dir / 'ch01_weights.png'}")
    return {"weights": weights.tolist(), "output": out.tolist(), "max_abs_diff": diff}


def default_out() -> Path:
    return Path(__file__).resolve().parents[1] / "figures"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out(), help="folder for the figures")
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and does not fight other processes
    main(parser.parse_args().out)
