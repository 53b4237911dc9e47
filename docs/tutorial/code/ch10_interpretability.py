"""Chapter 10: interpretability — attention maps of a trained model, head statistics, \
and why weights are not explanations.

Run: .venv/bin/python docs/tutorial/code/ch10_interpretability.py [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from attnlab import config
from attnlab.data import Tokenizer, read_documents
from attnlab.train import load_model, train
from attnlab.viz import capture_attention, plot_attention, token_labels

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "figures"
PASSAGE = "Ham.\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer"


def train_small_gpt(tmp: Path) -> tuple[torch.nn.Module, Tokenizer, str]:
    """A 2-layer, 4-head GPT trained for 150 steps on the start of the corpus (~20 s); returns held-out text too."""
    docs = read_documents("builtin:shakespeare")
    corpus = tmp / "hamlet.txt"
    corpus.write_text(docs[0][1])
    cfg = config.load("gpt-tiny", [
        f"data.source={corpus}", "data.tokenizer=bpe:1024", f"data.cache_dir={tmp / 'cache'}",
        "model.vocab_size=0", "model.block_size=64", "model.n_layer=2", "model.n_head=4", "model.d_model=128",
        f"train.out_dir={tmp / 'run'}", "train.batch_size=16", "train.seq_len=64", "train.max_steps=150",
        "train.optimizer=adamw", "train.warmup_steps=20", "train.lr=3e-3", "train.min_lr=3e-4", "train.eval_every=0",
        "train.eval_batches=4",
        "train.ckpt_every=0", "train.log_every=50", "train.device=cpu", "train.seed=0",
    ])
    summary = train(cfg, progress=False, log=lambda s: None)
    print(f"trained a 2-layer GPT for {summary['step']} steps: val loss {summary['val_loss']:.3f}")
    model, _ = load_model(tmp / "run")
    return model, Tokenizer.load(tmp / "run" / "tokenizer.json"), docs[1][1][5_000:25_000]


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation: 1 = same order, 0 = unrelated."""
    ra, rb = ranks(a), ranks(b)
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()


def head_statistics(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per (layer, head): mean entropy of the weights, weight on the previous token, mean distance attended."""
    with torch.no_grad(), capture_attention(model) as cap:
        model(ids)
    w = torch.stack([cap.weights[i][0] for i in sorted(cap.weights)])  # (L, H, T, T)
    t = w.shape[-1]
    pos = torch.arange(t)
    entropy = -(w * w.clamp_min(1e-12).log()).sum(-1).mean(-1)  # (L, H)
    prev = w[..., pos[1:], pos[:-1]].mean(-1)  # (L, H): weight on key q-1
    distance = (w * (pos.view(-1, 1) - pos.view(1, -1)).clamp_min(0)).sum(-1).mean(-1)  # (L, H)
    return {"weights": w, "entropy": entropy, "prev": prev, "distance": distance}


def loss_with_head_removed(model, ids: torch.Tensor, layer: int | None = None, head: int | None = None) -> float:
    """Next-token loss with one head's output zeroed (its slice of the output projection's input)."""
    hook = None
    if layer is not None:
        attn = model.blocks[layer].attn
        width = attn.o_proj.in_features // attn.n_head

        def zero_head(module, args):
            x = args[0].clone()  # (B, T, H * Dh)
            x[..., head * width:(head + 1) * width] = 0
            return (x,)

        hook = attn.o_proj.register_forward_pre_hook(zero_head)
    with torch.no_grad():
        logits = model(ids[:, :-1])  # (B, T - 1, V)
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()
    if hook is not None:
        hook.remove()
    return loss


def attributions(model, ids: torch.Tensor, filler: int) -> tuple[int, dict[str, torch.Tensor]]:
    """Three answers to "which earlier tokens made the model predict its next token?"."""
    embeddings = {}

    def keep(module, args, out):
        out.retain_grad()
        embeddings["e"] = out

    hook = model.tok_emb.register_forward_hook(keep)
    with capture_attention(model) as cap:
        logits = model(ids)  # (1, T, V)
    hook.remove()
    logp = logits[0, -1].log_softmax(-1)
    target = int(logp.argmax())
    logp[target].backward()
    e = embeddings["e"]
    grad_x_input = (e.grad * e).sum(-1)[0].abs().detach()  # (T,)
    last_layer = max(cap.weights)
    attention_last = cap.weights[last_layer][0, :, -1].mean(0).detach()  # (T,): last query, heads averaged
    occlusion = torch.zeros(ids.shape[1])
    with torch.no_grad():
        for i in range(ids.shape[1]):
            changed = ids.clone()
            changed[0, i] = filler
            occlusion[i] = logp[target].item() - model(changed)[0, -1].log_softmax(-1)[target].item()
    return target, {"attention (last layer)": attention_last, "gradient × input": grad_x_input,
                    "occlusion (drop in log p)": occlusion}


def main(out_dir: Path) -> dict:
    torch.set_num_threads(1)  # one thread: reproducible timings, and no slowdown on a busy 2-core machine
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, held_out = train_small_gpt(Path(tmp))
    model.eval()
    result: dict = {}

    ids = torch.tensor([tok.encode(PASSAGE)])  # (1, T)
    labels = token_labels(tok.token_strings(ids[0].tolist()))
    with torch.no_grad(), capture_attention(model) as cap:  # every layer and head: cap.weights[layer] (1, H, T, T)
        model(ids)
    plot_attention(cap.weights, labels, out_dir / "ch10_attention_maps.png",
                   title="2-layer GPT after 150 steps: rows = layers, columns = heads", max_tokens=14)

    held = torch.tensor(tok.encode(held_out)[: 8 * 64]).view(8, 64)  # (8, 64) held-out Macbeth windows
    stats = head_statistics(model, held[:1])
    base = loss_with_head_removed(model, held)
    n_layer, n_head = stats["entropy"].shape
    delta = torch.tensor([[loss_with_head_removed(model, held, layer, h) - base for h in range(n_head)]
                          for layer in range(n_layer)])  # (L, H)
    print(f"\nheld-out loss {base:.3f}; per head: entropy (nats), weight on previous token, mean distance, "
          "loss increase when the head is zeroed")
    for layer in range(n_layer):
        for h in range(n_head):
            print(f"  layer {layer} head {h}: entropy {stats['entropy'][layer, h]:.2f}  "
                  f"prev {stats['prev'][layer, h]:.2f}  "
                  f"distance {stats['distance'][layer, h]:5.1f}  Δloss {delta[layer, h]:+.3f}")
    rho_heads = spearman(-stats["entropy"].flatten(), delta.flatten())
    print(f"rank correlation between a head's sharpness (−entropy) and its ablation cost: {rho_heads:+.2f}")
    result.update(heldout_loss=base, max_ablation=delta.max().item(), rho_sharpness_ablation=rho_heads)

    target, scores = attributions(model, ids, filler=tok.encode(" the")[0])
    print(f"\nprediction after the passage: {tok.decode([target])!r}; token importance by three methods:")
    names = list(scores)
    for a in range(3):
        for b in range(a + 1, 3):
            rho = spearman(scores[names[a]], scores[names[b]])
            print(f"  rank correlation {names[a]} vs {names[b]}: {rho:+.2f}")
            result[f"rho {names[a]} / {names[b]}"] = rho
    top = {n: [labels[i] for i in s.topk(3).indices.tolist()] for n, s in scores.items()}
    for n, toks in top.items():
        print(f"  top-3 tokens by {n}: {toks}")

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    for layer in range(n_layer):
        axes[0].scatter(stats["entropy"][layer], delta[layer], label=f"layer {layer}", s=40)
    for (layer, h), e, d in zip([(layer, h) for layer in range(n_layer) for h in range(n_head)],
                                stats["entropy"].flatten(), delta.flatten(), strict=False):
        axes[0].annotate(f"{layer}.{h}", (e, d), fontsize=8, xytext=(3, 3), textcoords="offset points")
    axes[0].set(xlabel="attention entropy (nats)", ylabel="loss increase when zeroed",
                title=f"Heads: sharp ≠ important (ρ = {rho_heads:+.2f})")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    x = torch.arange(ids.shape[1]).float()
    for j, (n, s) in enumerate(scores.items()):
        axes[1].bar(x + (j - 1) * 0.28, (s / s.abs().max()).tolist(), width=0.28, label=n)
    axes[1].set_xticks(x.tolist(), labels, rotation=90, fontsize=7)
    axes[1].set(ylabel="importance (scaled to max 1)", title=f"Why predict {tok.decode([target])!r}? Three answers")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ch10_heads_attribution.png", dpi=100)
    plt.close(fig)
    print(f"\nwrote ch10_attention_maps.png, ch10_heads_attribution.png "
          f"({time.time() - t0:.1f} s)")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the figures")
    main(parser.parse_args().out)
