"""``attnlab serve CKPT``: an OpenAI-compatible HTTP server for a decoder-only checkpoint.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (see :mod:`attnlab.serve`). Concurrent requests are decoded
together in batches of up to ``--max-batch``; a request arriving while a batch runs joins it
between two steps (``--no-join``: waits for the next batch). On Ctrl-C / SIGTERM it stops accepting
connections, lets requests in flight finish (up to ``--shutdown-timeout`` s) and exits 0.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    from attnlab.cli._common import add_weight_flags

    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API",
        description="Serve /v1/completions and /v1/chat/completions for a trained decoder-only checkpoint. "
        "Concurrent requests are decoded together in batches of up to --max-batch; requests arriving while "
        "a batch runs join it between two steps.",
    )
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    p.add_argument("--max-tokens-cap", type=int, default=512, help="the most tokens one request may generate")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger request bodies get 413")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most (1: one at a time)")
    p.add_argument("--gather-ms", type=float, default=5.0,
                   help="how long to wait for more requests to batch once one arrived (ms)")
    p.add_argument("--no-join", action="store_true",
                   help="requests arriving while a batch runs wait for the whole batch to end (default: they join "
                        "it between two steps when there is room)")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="requests queued + running at most; more get 429")
    p.add_argument("--request-timeout", type=float, default=300.0,
                   help="seconds a request may take, queueing included; past it it ends with a 408 error "
                        "(0: no limit)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on Ctrl-C / SIGTERM, seconds to let requests in flight finish")
    p.add_argument("--model-name", default=None, help="model id reported by the API (default: the run folder name)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--no-request-log", action="store_true", help="do not log each request")
    p.add_argument("--quiet", dest="no_request_log", action="store_true", help=argparse.SUPPRESS)  # old name
    add_weight_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnlab.cli._common import load_for_decoding
    from attnlab.errors import AttnlabError
    from attnlab.serve import BatchConfig, Engine, ServeConfig, make_server, serve_until_stopped

    if not 0 <= args.port <= 65535:
        raise AttnlabError(f"--port must be in 0..65535, got {args.port}")
    for flag, value, low in (("--max-body-bytes", args.max_body_bytes, 1), ("--max-batch", args.max_batch, 1),
                             ("--max-concurrency", args.max_concurrency, 1), ("--gather-ms", args.gather_ms, 0),
                             ("--request-timeout", args.request_timeout, 0),
                             ("--shutdown-timeout", args.shutdown_timeout, 0)):
        if value < low:
            raise AttnlabError(f"{flag} must be >= {low}, got {value}")
    limits = BatchConfig(args.max_batch, args.gather_ms, args.max_concurrency, args.request_timeout or None,
                         join=not args.no_join)
    model, tok, ckpt, device, weights = load_for_decoding(args.checkpoint, args.device, args.dtype, args.quantize)
    if ckpt.config.model.arch != "decoder":
        raise AttnlabError(f"'{ckpt.path}' holds a model.arch={ckpt.config.model.arch} model; attnlab serve "
                           "serves decoder-only LMs (use attnlab generate for encoder-decoders)")
    name = args.model_name or Path(args.checkpoint).resolve().name
    engine = Engine(model, tok, device, name, max_tokens_cap=args.max_tokens_cap, batch=limits)
    try:
        server = make_server(engine, ServeConfig(args.host, args.port, args.max_body_bytes, not args.no_request_log))
    except OSError as e:
        engine.close(0)
        raise AttnlabError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pick another --port") from None

    host, port = server.server_address[:2]

    def banner() -> None:
        print(f"attnlab serve: {name} on http://{host}:{port} (context {engine.context}, "
              f"max_tokens cap {engine.max_tokens_cap}, max batch {args.max_batch}); Ctrl-C to stop",
              file=sys.stderr, flush=True)
        print(f"attnlab serve: {weights.line()}", file=sys.stderr, flush=True)

    def drain() -> None:
        if not server.drain(args.shutdown_timeout):
            print(f"attnlab serve: requests still running after {args.shutdown_timeout} s were ended",
                  file=sys.stderr, flush=True)

    serve_until_stopped(server, banner, drain)
    print("attnlab serve: stopped", file=sys.stderr, flush=True)
    return 0
