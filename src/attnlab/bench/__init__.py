"""Benchmarks runnable from the package (``attnlab bench ...``).

    from attnlab.bench import BenchSettings, run_benchmark, format_table
    result = run_benchmark(BenchSettings(seq_lens=[512, 1024], backends=["eager", "sdpa"]))
    print(format_table(result["rows"]))
"""

from attnlab.bench.attention import (
    BenchSettings,
    allowed_pairs,
    attention_flops,
    available_backends,
    format_table,
    plot_results,
    run_benchmark,
)

__all__ = [
    "BenchSettings", "allowed_pairs", "attention_flops", "available_backends", "format_table", "plot_results",
    "run_benchmark",
]
