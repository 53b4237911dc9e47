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

    python benchmarks/vs_nanogpt.py --nanogpt third_party/nanogpt              # CUDA: gpt2-124m, 16 x 1024, bf16
    python benchmarks/vs_nanogpt.py --nanogpt third_party/nanogpt --threads 1  # CPU: gpt-tiny size, 8 x 256
    # CPU, nanoGPT's own CPU shape (4 x 4 x 128, 12 x 64, char-level), fp32 vs fp32 and our default vs theirs:
    python benchmarks/vs_nanogpt.py --nanogpt third_party/nanogpt --threads 2 --shape nanogpt-cpu \
        --attnlab-dtype float32 auto --out benchmarks/results/vs_nanogpt-cpu-nanoshape
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

from bench_common import char_corpus, device_label, windows  # noqa: E402

from attnlab.config import Config, load  # noqa: E402
from attnlab.data import prepare  # noqa: E402
from attnlab.errors import AttnlabError  # noqa: E402
from attnlab.models import build  # noqa: E402
from attnlab.precision import Precision, resolve_precision  # noqa: E402
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


Batches = list[tuple[torch.Tensor, torch.Tensor]]


def token_batches(args: argparse.Namespace, vocab: int, n: int, seq_len: int) -> Batches:
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
        self.precision = ("float32", "")  # (label, why), set by main

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


NANOGPT_CPU = {"n_layer": 4, "n_head": 4, "d_model": 128, "block_size": 64, "vocab_size": 65, "bias": False}
"""nanoGPT's CPU run in its README (train_shakespeare_char.py with --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --dropout=0.0; bias off, lr 1e-3, betas (0.9, 0.99) as in that config)."""


def precision_label(setting: str, p: Precision) -> str:
    """``float32``, ``bfloat16`` or ``bfloat16 (auto)``: what ran, and whether ``auto`` chose it."""
    return p.name + (" (auto)" if setting == "auto" else "")


def val_loss(r: Runner, batches: Batches, eager: StepFn) -> float:
    """Mean loss of the (uncompiled) model on held-out batches, under the runner's precision, no grad."""
    r.model.eval()
    with torch.no_grad(), r.amp:
        total = sum(eager(x, y).float().item() for x, y in batches)
    r.model.train()
    return total / len(batches)


def parse_args(on_cuda: bool) -> argparse.Namespace:
    """The command line; ``--shape nanogpt-cpu`` fills in nanoGPT's CPU sizes, data and recipe."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", required=True, help="folder holding nanoGPT's model.py (see --help text above)")
    ap.add_argument("--shape", choices=("preset", "nanogpt-cpu"), default="preset",
                    help="nanogpt-cpu: 4 layers, 4 heads, d 128, block 64, batch 12, vocab 65, char-level data")
    ap.add_argument("--preset", default="gpt2-124m" if on_cuda else "gpt-tiny", help="attnlab preset for both")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="default 50304 on CUDA (GPT-2's 50257 padded to a multiple of 64, as nanoGPT does), "
                         "4096 on CPU")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--data", default=None, help="preset whose data config gives the corpus, 'char' (the embedded "
                    "Shakespeare as characters, 90/10 split) or 'random'")
    ap.add_argument("--attnlab-dtype", nargs="+", default=["auto"], choices=("auto", "float32", "bfloat16"),
                    help="one attnlab model per setting, all in the same run (resolved by attnlab.precision)")
    ap.add_argument("--nanogpt-dtype", default="bfloat16" if on_cuda else "float32", choices=("float32", "bfloat16"),
                    help="nanoGPT's precision (its default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=on_cuda)
    ap.add_argument("--compile-loss", action=argparse.BooleanOptionalAction, default=True,
                    help="compile attnlab's model and loss as one graph, as single-process `attnlab train` does "
                         "(and nanoGPT's forward with targets); --no-compile-loss compiles the model only")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per model (compilation happens here)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps per model")
    ap.add_argument("--val-batches", type=int, default=20, help="held-out batches for the final validation loss")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/vs_nanogpt-<device>)")
    args = ap.parse_args()
    nano_cpu = args.shape == "nanogpt-cpu"
    defaults = {"vocab_size": 65 if nano_cpu else 50304 if on_cuda else 4096,
                "batch_size": 12 if nano_cpu else 16 if on_cuda else 8,
                "seq_len": 64 if nano_cpu else 1024 if on_cuda else 256,
                "data": "char" if nano_cpu else "gpt-tiny", "iters": 30 if on_cuda or nano_cpu else 20,
                "lr": 1e-3 if nano_cpu else 6e-4}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main() -> None:
    on_cuda = torch.cuda.is_available()
    args = parse_args(on_cuda)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if on_cuda else "cpu")
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch._dynamo.config.suppress_errors = False  # a failed compile raises instead of running eagerly
    nano = load_nanogpt(args.nanogpt)
    cfg = bench_config(args.preset, args.vocab_size, args.seq_len)
    if args.shape == "nanogpt-cpu":
        for k, v in NANOGPT_CPU.items():
            setattr(cfg.model, k, v)
        cfg.model.mlp = "gelu_exact"  # nanoGPT's nn.GELU()
        cfg.train.beta2 = 0.99

    runners: list[Runner] = []
    eager: dict[str, StepFn] = {}
    n_params: dict[str, int] = {}
    for setting in args.attnlab_dtype:
        prec = resolve_precision(setting, device)
        name = "attnlab" if len(args.attnlab_dtype) == 1 else f"attnlab {precision_label(setting, prec)}"
        torch.manual_seed(1337)
        ours = build(cfg).to(device)
        opt = build_optimizer(ours, cfg.train, device.type)  # AdamW, betas from cfg.train, wd 0.1, fused on CUDA
        fn = attnlab_loss(ours)
        if args.compile:
            fn = torch.compile(attnlab_loss(ours)) if args.compile_loss else attnlab_loss(torch.compile(ours))
        runners.append(Runner(name, ours, fn, opt, device, prec.autocast(device)))
        runners[-1].precision = (precision_label(setting, prec), prec.reason)
        eager[name], n_params[name] = attnlab_loss(ours), ours.num_params()
    nano_prec = resolve_precision(args.nanogpt_dtype, device)
    torch.manual_seed(1337)
    theirs = nanogpt_model(nano, cfg).to(device)
    opt_theirs = theirs.configure_optimizers(cfg.train.weight_decay, args.lr, (cfg.train.beta1, cfg.train.beta2),
                                             device.type)
    fn_theirs = nanogpt_loss(torch.compile(theirs)) if args.compile else nanogpt_loss(theirs)
    runners.append(Runner("nanoGPT", theirs, fn_theirs, opt_theirs, device, nano_prec.autocast(device)))
    runners[-1].precision = (nano_prec.name, f"{nano_prec.name} (nanoGPT's default on {device.type})"
                             if args.nanogpt_dtype == ("bfloat16" if on_cuda else "float32") else nano_prec.reason)
    eager["nanoGPT"], n_params["nanoGPT"] = nanogpt_loss(theirs), sum(p.numel() for p in theirs.parameters())

    total = args.warmup + args.iters
    if args.data == "char":
        train_ids, val_ids = char_corpus(cfg.model.vocab_size)
        raw = windows(train_ids, total, args.batch_size, args.seq_len, seed=1337)
        raw_val = windows(val_ids, args.val_batches, args.batch_size, args.seq_len, seed=7)
    else:
        raw = token_batches(args, cfg.model.vocab_size, total + args.val_batches, args.seq_len)
        raw, raw_val = raw[:total], raw[total:]
    batches = [(x.to(device), y.to(device)) for x, y in raw]
    val = [(x.to(device), y.to(device)) for x, y in raw_val]
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
    for s in range(args.warmup, total):  # timed, interleaved, the order rotating each step
        k = s % len(runners)
        for r in runners[k:] + runners[:k]:
            r.step(*batches[s], args.lr, timed=True)
        if (s + 1) % 10 == 0:
            print(f"step {s + 1}/{total}: " + ", ".join(f"{r.name} {r.times[-1] * 1000:.0f} ms" for r in runners),
                  file=sys.stderr, flush=True)
    late = {k: v - settled[k] for k, v in compile_counts().items()}
    if args.compile:
        for name, c in counts.items():
            if c["frames"] == 0:
                raise AttnlabError(f"{name}: torch.compile compiled nothing (a silent eager fallback)")
        if late["frames"] or late["recompiles"]:
            raise AttnlabError(f"recompilation during the timed steps: {late}")
    vals = {r.name: val_loss(r, val, eager[r.name]) for r in runners}

    tokens = args.batch_size * args.seq_len
    n_ours = n_params[runners[0].name]
    fpt = flops_per_token(cfg.model, args.seq_len, n_ours)  # the same FLOPs for both: same architecture
    peak = peak_flops(device)
    rows = []
    for r in runners:
        ms = statistics.median(r.times) * 1000
        tok_s = tokens / (ms / 1000)
        rows.append({
            "name": r.name,
            "precision": r.precision[0],
            "precision_reason": r.precision[1],
            "params": n_params[r.name],
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
            "val_loss": round(vals[r.name], 4),
            "losses": [round(v, 4) for v in r.losses],
            "ms_per_iter_all": [round(t * 1000, 2) for t in r.times],
        })
    n = rows[-1]
    nano_r = runners[-1]
    vs = []
    for r, row_ in zip(runners[:-1], rows[:-1], strict=True):
        gaps = [abs(u - v) for u, v in zip(r.losses, nano_r.losses, strict=True)]
        vs.append({"attnlab": r.name, "speedup_tokens_per_s": round(row_["tokens_per_s"] / n["tokens_per_s"], 3),
                   "loss_gap_mean_abs": round(statistics.mean(gaps), 4),
                   "loss_gap_last5": round(row_["loss_last5_mean"] - n["loss_last5_mean"], 4),
                   "val_loss_rel_gap": round(row_["val_loss"] / n["val_loss"] - 1, 4)})
    dev_name = device_label("cuda" if on_cuda else "cpu")
    m = cfg.model
    result = {
        "benchmark": "vs_nanogpt",
        "command": "python benchmarks/vs_nanogpt.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": dev_name,
        "torch": torch.__version__,
        "load_average_1_5_15min_at_end": [round(v, 2) for v in os.getloadavg()],
        "shape": args.shape,
        "config": {"preset": args.preset, "n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model,
                   "vocab_size": m.vocab_size, "block_size": m.block_size, "bias": m.bias, "dropout": 0.0,
                   "tied_embeddings": True, "attnlab_mlp": m.mlp, "nanogpt_mlp": "GELU (exact erf)"},
        "batch_size": args.batch_size, "seq_len": args.seq_len, "tokens_per_iter": tokens,
        "data": args.data, "dtype": ", ".join(f"{r['name']}: {r['precision']}" for r in rows),
        "compile": args.compile,
        "attnlab_compiled": ("model + loss" if args.compile_loss else "model") if args.compile else None,
        "optimizer": f"AdamW lr {args.lr} (linear warmup over the {args.warmup} warm-up steps), "
                     f"betas ({cfg.train.beta1}, {cfg.train.beta2}), wd {cfg.train.weight_decay} on >=2-D weights, "
                     "clip 1.0" + (", fused" if on_cuda else ""),
        "warmup_steps": args.warmup, "timed_steps": args.iters, "val_batches": args.val_batches,
        "late_compiles": late if args.compile else None,
        "speedup_tokens_per_s": vs[0]["speedup_tokens_per_s"],
        "loss_gap_mean_abs": vs[0]["loss_gap_mean_abs"],
        "loss_gap_last5": vs[0]["loss_gap_last5"],
        "vs_nanogpt": vs,
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
    mlp = {"gelu": "tanh GELU", "gelu_exact": "exact GELU"}.get(c["attnlab_mlp"], c["attnlab_mlp"])
    lines = [
        f"# attnlab vs nanoGPT ({res['device']}, torch {res['torch']}, {res['date']})",
        "",
        f"`{res.get('command', '')}`. Load average at the end {res['load_average_1_5_15min_at_end']}"
        + (" (2-core machine shared with other jobs; torch.set_num_threads as in the device column)."
           if res["device"].startswith("cpu") else "."),
        "",
        f"{c['n_layer']} layers, {c['n_head']} heads, d {c['d_model']}, vocab {c['vocab_size']}, "
        f"bias {c['bias']}, no dropout, tied embeddings (attnlab `{c['attnlab_mlp']}` MLP = {mlp}, nanoGPT exact "
        f"GELU); batch {res['batch_size']} x {res['seq_len']}, {res['dtype']}, compile {res['compile']}"
        + (f" (attnlab: {res['attnlab_compiled']})" if res["compile"] else "") + f", data "
        f"`{res['data']}`; {res['optimizer']}. {res['warmup_steps']} warm-up steps per model, then "
        f"{res['timed_steps']} timed steps each, interleaved (order rotating each step); validation loss on "
        f"{res.get('val_batches', '–')} held-out batches after the last step.",
        "",
        "| | precision | params | ms/iter (median) | tokens/s | MFU | step peak MiB | warm-up s | compiles "
        "(frames / breaks) | loss step 1 | loss, last 5 | val loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        cc = r["compile_counts"]
        mfu = "–" if r["mfu"] is None else f"{r['mfu']:.1%}"
        mem = "–" if r["peak_step_mib"] is None else r["peak_step_mib"]
        comp = "–" if cc is None else f"{cc['frames']} / {cc['graph_breaks']}"
        lines.append(
            f"| {r['name']} | {r.get('precision', '–')} | {r['params']:,} | {r['ms_per_iter_median']} | "
            f"{r['tokens_per_s']:,} | {mfu} | {mem} | {r['warmup_s']} | {comp} | {r['loss_first']} | "
            f"{r['loss_last5_mean']} | {r.get('val_loss', '–')} |")
    n_steps = len(res["rows"][0]["losses"])
    marks = sorted({1, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, n_steps} & set(range(1, n_steps + 1)))
    lines += ["", "Training loss by step (the same batch at each step for all):", "",
              "| step | " + " | ".join(map(str, marks)) + " |", "|---" * (len(marks) + 1) + "|"]
    lines += [f"| {r['name']} | " + " | ".join(str(r["losses"][k - 1]) for k in marks) + " |" for r in res["rows"]]
    lines += [""]
    for v in res.get("vs_nanogpt", []):
        lines.append(f"- {v['attnlab']} / nanoGPT tokens/s: **{v['speedup_tokens_per_s']}x**; validation loss "
                     f"{v['val_loss_rel_gap']:+.2%} relative; mean |training-loss gap| per step "
                     f"{v['loss_gap_mean_abs']}, last-5 gap (attnlab − nanoGPT) {v['loss_gap_last5']}.")
    lines += ["", "Precision of each row: " + "; ".join(f"{r['name']}: {r.get('precision_reason', '–')}"
                                                        for r in res["rows"]) + ".",
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
