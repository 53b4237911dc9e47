"""attnlab vs nanoGPT: training throughput and loss side by side, in one process.

Both models get the same config, the same batches (windows of the embedded corpus, or
random tokens), AdamW with the same settings, the same autocast, and (with ``--compile``)
``torch.compile``; their steps are interleaved, so machine load hits both alike. Reports
ms/iter, tokens/s, MFU (CUDA), the step's peak memory (CUDA) and the loss of every step.

nanoGPT is not part of attnlab: fetch its ``model.py`` into the ignored ``third_party/``
folder and pass that folder with ``--nanogpt`` (nothing of it is copied into our files)::

    mkdir -p third_party/nanogpt
    git --git-dir=/work/.mirror/karpathy+nanoGPT/repo archive HEAD model.py | tar -x -C third_party/nanogpt
    # or: curl -o third_party/nanogpt/model.py https://raw.githubusercontent.com/karpathy/nanoGPT/master/model.py

    # CUDA: gpt2-124m, 16 x 1024, bf16, compiled
    python benchmarks/vs_nanogpt.py --nanogpt third_party/nanogpt
    # CPU: gpt-tiny size, 8 x 256
    python benchmarks/vs_nanogpt.py --nanogpt third_party/nanogpt --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import device_label  # noqa: E402

from attnlab.config import Config, load  # noqa: E402
from attnlab.data import prepare  # noqa: E402
from attnlab.errors import AttnlabError  # noqa: E402
from attnlab.models import build  # noqa: E402
from attnlab.train.loop import autocast_for  # noqa: E402
from attnlab.train.metrics import flops_per_token, peak_flops  # noqa: E402
from attnlab.train.objectives import token_loss  # noqa: E402
from attnlab.train.optim import build_optimizer  # noqa: E402

FETCH_HINT = (
    "mkdir -p third_party/nanogpt && git --git-dir=/work/.mirror/karpathy+nanoGPT/repo archive HEAD model.py "
    "| tar -x -C third_party/nanogpt  (or download nanoGPT's model.py there)"
)

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def load_nanogpt(folder: str | Path) -> ModuleType:
    """Import nanoGPT's ``model.py`` from ``folder`` (under its own module name, never copied)."""
    path = Path(folder) / "model.py"
    if not path.is_file():
        raise AttnlabError(f"no nanoGPT model.py in '{folder}'; fetch it with: {FETCH_HINT}")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt_model(nano: ModuleType, cfg: Config) -> torch.nn.Module:
    """nanoGPT's GPT with the sizes of attnlab's ``cfg.model`` (its own init; dropout 0)."""
    m = cfg.model
    return nano.GPT(nano.GPTConfig(block_size=m.block_size, vocab_size=m.vocab_size, n_layer=m.n_layer,
                                   n_head=m.n_head, n_embd=m.d_model, dropout=0.0, bias=m.bias))


def bench_config(preset: str, vocab_size: int, seq_len: int) -> Config:
    """attnlab's preset with the benchmark's vocabulary and a block that fits ``seq_len``."""
    cfg = load(preset)
    cfg.model.vocab_size = vocab_size
    cfg.model.block_size = max(cfg.model.block_size, seq_len)
    cfg.model.dropout = 0.0
    return cfg


def attnlab_loss(model: torch.nn.Module) -> StepFn:
    """The loss `attnlab train` computes: the model's logits, then float32 cross-entropy."""
    return lambda x, y: token_loss(model(x), y)


def nanogpt_loss(model: torch.nn.Module) -> StepFn:
    """nanoGPT's loss: its forward with targets (cross-entropy inside the model)."""
    return lambda x, y: model(x, y)[1]


def compile_counts() -> dict[str, int]:
    """Dynamo's running totals of compiled frames, graphs and graph breaks."""
    from torch._dynamo.utils import counters

    return {"frames": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(v for k, v in counters["recompiles"].items()))}


def token_batches(
    args: argparse.Namespace, vocab: int, n: int, seq_len: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` training batches (x, y), each (B, T): corpus windows or random tokens."""
    if args.data == "random":
        gen = torch.Generator().manual_seed(0)
        out = []
        for _ in range(n):
            w = torch.randint(0, vocab, (args.batch_size, seq_len + 1), generator=gen)  # (B, T + 1)
            out.append((w[:, :-1].contiguous(), w[:, 1:].contiguous()))
        return out
    data = prepare(load(args.data).data, progress=False)
    if data.vocab_size > vocab:
        raise AttnlabError(f"--data {args.data} has {data.vocab_size} token ids, more than --vocab-size {vocab}")
    return [data.get_batch("train", s, args.batch_size, seq_len, seed=1337) for s in range(n)]


class Runner:
    """One model's training step (forward, loss, backward, clip, AdamW) with its timings."""

    def __init__(self, name: str, model: torch.nn.Module, loss_fn: StepFn, opt: torch.optim.Optimizer,
                 device: torch.device, amp: Any) -> None:
        self.name, self.model, self.loss_fn, self.opt = name, model, loss_fn, opt
        self.device, self.amp = device, amp
        self.times: list[float] = []
        self.losses: list[float] = []
        self.peak_step_bytes = 0

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float, timed: bool) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with self.amp:
            loss = self.loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if on_cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if on_cuda:
            self.peak_step_bytes = max(self.peak_step_bytes, torch.cuda.max_memory_allocated() - base)
        self.losses.append(loss.item())
        if timed:
            self.times.append(dt)


def lr_at(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak``, then constant (the same for both models)."""
    return peak * min(1.0, (step + 1) / warmup)


def main() -> None:
    on_cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", required=True, help="folder holding nanoGPT's model.py (see --help text above)")
    ap.add_argument("--preset", default="gpt2-124m" if on_cuda else "gpt-tiny", help="attnlab preset for both")
    ap.add_argument("--vocab-size", type=int, default=50304 if on_cuda else 4096,
                    help="50304: GPT-2's 50257 padded to a multiple of 64, as nanoGPT does")
    ap.add_argument("--batch-size", type=int, default=16 if on_cuda else 8)
    ap.add_argument("--seq-len", type=int, default=1024 if on_cuda else 256)
    ap.add_argument("--data", default="gpt-tiny", help="preset whose data config gives the corpus, or 'random'")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=on_cuda)
    ap.add_argument("--compile-loss", action=argparse.BooleanOptionalAction, default=True,
                    help="compile attnlab's model and loss as one graph, as single-process `attnlab train` does "
                         "(and nanoGPT's forward with targets); --no-compile-loss compiles the model only")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per model (compilation happens here)")
    ap.add_argument("--iters", type=int, default=30 if on_cuda else 20, help="timed steps per model")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/vs_nanogpt-<device>)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if on_cuda else "cpu")
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch._dynamo.config.suppress_errors = False  # a failed compile raises instead of running eagerly
    nano = load_nanogpt(args.nanogpt)
    cfg = bench_config(args.preset, args.vocab_size, args.seq_len)
    amp = autocast_for(device, "auto")

    torch.manual_seed(1337)
    ours = build(cfg).to(device)
    torch.manual_seed(1337)
    theirs = nanogpt_model(nano, cfg).to(device)
    n_ours, n_theirs = ours.num_params(), sum(p.numel() for p in theirs.parameters())
    opt_ours = build_optimizer(ours, cfg.train, device.type)  # AdamW, betas (0.9, 0.95), wd 0.1, fused on CUDA
    opt_theirs = theirs.configure_optimizers(cfg.train.weight_decay, args.lr, (cfg.train.beta1, cfg.train.beta2),
                                             device.type)
    fn_ours, fn_theirs = attnlab_loss(ours), nanogpt_loss(theirs)
    if args.compile:
        fn_ours = torch.compile(attnlab_loss(ours)) if args.compile_loss else attnlab_loss(torch.compile(ours))
        fn_theirs = nanogpt_loss(torch.compile(theirs))
    runners = [Runner("attnlab", ours, fn_ours, opt_ours, device, amp),
               Runner("nanoGPT", theirs, fn_theirs, opt_theirs, device, amp)]

    total = args.warmup + args.iters
    batches = [(x.to(device), y.to(device)) for x, y in token_batches(args, cfg.model.vocab_size, total, args.seq_len)]
    counts: dict[str, dict[str, int]] = {}
    warm_s: dict[str, float] = {}
    for r in runners:  # warm-up (and compilation) of one model at a time, so compile counts are per model
        before, t0 = compile_counts(), time.perf_counter()
        for s in range(args.warmup):
            r.step(*batches[s], lr_at(s, args.lr, args.warmup), timed=False)
        warm_s[r.name] = time.perf_counter() - t0
        after = compile_counts()
        counts[r.name] = {k: after[k] - before[k] for k in after}
    settled = compile_counts()
    for s in range(args.warmup, total):  # timed, interleaved: attnlab, nanoGPT, attnlab, ...
        for r in (runners if s % 2 == 0 else runners[::-1]):
            r.step(*batches[s], args.lr, timed=True)
    late = {k: v - settled[k] for k, v in compile_counts().items()}
    if args.compile:
        for name, c in counts.items():
            if c["frames"] == 0:
                raise AttnlabError(f"{name}: torch.compile compiled nothing (a silent eager fallback)")
        if late["frames"] or late["recompiles"]:
            raise AttnlabError(f"recompilation during the timed steps: {late}")

    tokens = args.batch_size * args.seq_len
    fpt = flops_per_token(cfg.model, args.seq_len, n_ours)  # the same FLOPs for both: same architecture
    peak = peak_flops(device)
    rows = []
    for r in runners:
        ms = statistics.median(r.times) * 1000
        tok_s = tokens / (ms / 1000)
        rows.append({
            "name": r.name,
            "params": n_ours if r.name == "attnlab" else n_theirs,
            "ms_per_iter_median": round(ms, 2),
            "ms_per_iter_min": round(min(r.times) * 1000, 2),
            "tokens_per_s": round(tok_s),
            "mfu": round(fpt * tok_s / peak, 4) if peak else None,
            "peak_step_mib": round(r.peak_step_bytes / 2**20, 1) if on_cuda else None,
            "warmup_s": round(warm_s[r.name], 1),
            "compile_counts": counts[r.name] if args.compile else None,
            "loss_first": round(r.losses[0], 4),
            "loss_last": round(r.losses[-1], 4),
            "loss_last5_mean": round(statistics.mean(r.losses[-5:]), 4),
            "losses": [round(v, 4) for v in r.losses],
            "ms_per_iter_all": [round(t * 1000, 2) for t in r.times],
        })
    a, n = rows
    gaps = [abs(u - v) for u, v in zip(runners[0].losses, runners[1].losses, strict=False)]
    dev_name = device_label("cuda" if on_cuda else "cpu")
    m = cfg.model
    result = {
        "benchmark": "vs_nanogpt",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": dev_name,
        "torch": torch.__version__,
        "load_average_1_5_15min_at_end": [round(v, 2) for v in os.getloadavg()],
        "config": {"preset": args.preset, "n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model,
                   "vocab_size": m.vocab_size, "block_size": m.block_size, "bias": m.bias, "dropout": 0.0,
                   "tied_embeddings": True, "attnlab_mlp": m.mlp, "nanogpt_mlp": "GELU (exact erf)"},
        "batch_size": args.batch_size, "seq_len": args.seq_len, "tokens_per_iter": tokens,
        "data": args.data, "dtype": "bf16 autocast" if on_cuda else "fp32", "compile": args.compile,
        "attnlab_compiled": ("model + loss" if args.compile_loss else "model") if args.compile else None,
        "optimizer": f"AdamW lr {args.lr} (linear warmup over the {args.warmup} warm-up steps), "
                     f"betas ({cfg.train.beta1}, {cfg.train.beta2}), wd {cfg.train.weight_decay} on >=2-D weights, "
                     "clip 1.0" + (", fused" if on_cuda else ""),
        "warmup_steps": args.warmup, "timed_steps": args.iters,
        "late_compiles": late if args.compile else None,
        "speedup_tokens_per_s": round(a["tokens_per_s"] / n["tokens_per_s"], 3),
        "loss_gap_mean_abs": round(statistics.mean(gaps), 4),
        "loss_gap_last5": round(a["loss_last5_mean"] - n["loss_last5_mean"], 4),
        "rows": rows,
    }
    stem = Path(args.out) if args.out else Path(__file__).parent / "results" / f"vs_nanogpt-{device.type}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {stem.with_suffix('.json')} and .md")


def markdown(res: dict[str, Any]) -> str:
    """The result as a small markdown report."""
    c = res["config"]
    lines = [
        f"# attnlab vs nanoGPT ({res['device']}, torch {res['torch']}, {res['date']})",
        "",
        f"Load average at the end {res['load_average_1_5_15min_at_end']}"
        + (" (2-core machine shared with other jobs; torch.set_num_threads as in the device column)."
           if res["device"].startswith("cpu") else "."),
        "",
        f"{c['n_layer']} layers, {c['n_head']} heads, d {c['d_model']}, vocab {c['vocab_size']}, "
        f"bias {c['bias']}, no dropout, tied embeddings (attnlab `{c['attnlab_mlp']}` MLP = tanh GELU, nanoGPT exact "
        f"GELU); batch {res['batch_size']} x {res['seq_len']}, {res['dtype']}, compile {res['compile']}"
        + (f" (attnlab: {res['attnlab_compiled']})" if res["compile"] else "") + f", data "
        f"`{res['data']}`; {res['optimizer']}. {res['warmup_steps']} warm-up steps per model, then "
        f"{res['timed_steps']} timed steps each, interleaved.",
        "",
        "| | params | ms/iter (median) | tokens/s | MFU | step peak MiB | warm-up s | compiles (frames / breaks) "
        "| loss step 1 | loss, last 5 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        cc = r["compile_counts"]
        mfu = "–" if r["mfu"] is None else f"{r['mfu']:.1%}"
        mem = "–" if r["peak_step_mib"] is None else r["peak_step_mib"]
        comp = "–" if cc is None else f"{cc['frames']} / {cc['graph_breaks']}"
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['ms_per_iter_median']} | {r['tokens_per_s']:,} | {mfu} | {mem} | "
            f"{r['warmup_s']} | {comp} | {r['loss_first']} | {r['loss_last5_mean']} |")
    marks = sorted({1, 5, 10, 15, 20, 25, 30, 40, 50, len(res["rows"][0]["losses"])} &
                   set(range(1, len(res["rows"][0]["losses"]) + 1)))
    lines += ["", "Training loss by step (the same batch at each step for both):", "",
              "| step | " + " | ".join(map(str, marks)) + " |", "|---" * (len(marks) + 1) + "|"]
    lines += [f"| {r['name']} | " + " | ".join(str(r["losses"][k - 1]) for k in marks) + " |" for r in res["rows"]]
    lines += ["", f"attnlab / nanoGPT tokens/s: **{res['speedup_tokens_per_s']}x**; mean |loss gap| per step "
              f"{res['loss_gap_mean_abs']}, last-5 gap (attnlab − nanoGPT) {res['loss_gap_last5']}.",
              "Both initialise GPT-2 style (N(0, 0.02), residual projections scaled by 1/sqrt(2·layers), tied "
              "embeddings) from seed 1337, but the two codebases draw their tensors in a different order (and "
              "attnlab's position embeddings use std 0.01), so the curves are two samples of the same recipe, "
              "not the same numbers.", ""]
    return "\n".join(lines)


def run_cli(entry: Callable[[], None]) -> None:
    """Run a benchmark's ``main``; an :class:`AttnlabError` prints one line and exits 2."""
    try:
        entry()
    except AttnlabError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run_cli(main)
