"""``attnlab bench attention``: time attention backends; prints a table, writes JSON + PNG.

    attnlab bench attention --seq-lens 1024,4096 --masks causal --backends sdpa,sdpa-flash,sdpa-cudnn
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attnlab.errors import AttnlabError


def _list(value: str, option: str, kind: type = str) -> list:
    try:
        items = [kind(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise AttnlabError(f"{option} must be a comma-separated list of {kind.__name__}s, got '{value}'") from None
    if not items:
        raise AttnlabError(f"{option} is empty; give at least one value")
    return items


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench`` and its benchmarks (``attention``)."""
    from attnlab.bench.attention import available_backends

    parser = sub.add_parser("bench", help="benchmarks (attention kernels)", description=__doc__.splitlines()[0])
    which = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    backends = available_backends()
    p = which.add_parser(
        "attention",
        help="time, TFLOP/s and peak memory of attention backends per mask and length",
        description="Measure forward and forward+backward attention per backend, mask, sequence length and "
        "head dim. Raw SDPA kernels (sdpa-flash, ...) are forced with sdpa_kernel; a backend that cannot run "
        "a config is reported as 'unsupported: <reason>'. FLOPs count only allowed (query, key) pairs.",
        epilog=f"backends here: {', '.join(backends)}",
    )
    p.add_argument("--seq-lens", default="256,512,1024", help="comma-separated sequence lengths")
    p.add_argument("--head-dims", default="64", help="comma-separated head dims")
    p.add_argument("--heads", type=int, default=8, help="attention heads")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--masks", default="causal,sliding_window:128,none",
                   help="comma-separated masks: causal, none, sliding_window:W")
    p.add_argument("--backends", default=",".join(backends),
                   help="comma-separated backends (default: all available here)")
    p.add_argument("--mode", default="fwd,fwd+bwd", help="fwd and/or fwd+bwd")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--repeats", type=int, default=0,
                   help="timed runs per config, median reported (default 10 CUDA, 5 CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/attention-<device>.json); "
                   "the PNG goes beside it")
    p.set_defaults(func=run)
    return parser


def _out_path(out: str | None, tag: str) -> Path:
    return Path(out) if out else Path("benchmarks") / "results" / f"attention-{tag}.json"


def run(args: argparse.Namespace) -> int:
    """Run the selected benchmark."""
    from attnlab.bench.attention import BenchSettings, device_info, format_table, plot_results, resolve, run_benchmark

    settings = BenchSettings(
        seq_lens=_list(args.seq_lens, "--seq-lens", int), head_dims=_list(args.head_dims, "--head-dims", int),
        heads=args.heads, batch=args.batch, masks=_list(args.masks, "--masks"),
        backends=_list(args.backends, "--backends"), modes=_list(args.mode, "--mode"), dtype=args.dtype,
        repeats=args.repeats, warmup=args.warmup, device=args.device,
    )
    try:
        settings.validate()
        device, _, _ = resolve(settings)
    except ValueError as e:
        raise AttnlabError(str(e)) from None
    path = _out_path(args.out, device_info(device)["tag"])
    if path.suffix != ".json":
        raise AttnlabError(f"--out must end in .json, got '{path}'")
    print(format_table([]))  # the header; rows print as they are measured
    result = run_benchmark(settings, progress=lambda r: print(format_table([r], header=False), flush=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    png = path.with_suffix(".png")
    plot_results(result, str(png))
    print(f"\nmemory: {result['memory_method']}\nwrote {path}\nwrote {png}")
    return 0
