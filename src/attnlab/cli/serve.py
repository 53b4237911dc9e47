"""``attnlab serve RUN``: an OpenAI-compatible HTTP server (FastAPI on uvicorn) for a decoder-only model.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (chat rendered with the checkpoint's chat template), ``/metrics``,
the chat page at ``/`` and the API schema at ``/docs`` (see :mod:`attnlab.serve.app`). ``RUN`` is
a run or checkpoint folder of ``attnlab train`` or a fine-tuned run (``attnlab finetune sft``).
Concurrent requests are decoded together in batches of up to ``--max-batch``; a request arriving
while a batch runs joins it between two steps (``--no-join``: waits for the next batch). On
Ctrl-C / SIGTERM it stops accepting connections, lets requests in flight finish (up to
``--shutdown-timeout`` s) and exits 0.
"""

from __future__ import annotations

import argparse
import sys

API_KEY_ENV = "ATTNLAB_API_KEY"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from attnlab.cli._common import add_weight_flags

    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API",
        description="Serve /v1/completions and /v1/chat/completions (with a chat page at /) for a trained or "
        "fine-tuned decoder-only model. Chat messages are rendered with the model's chat template. Concurrent "
        "requests are decoded together in batches of up to --max-batch; requests arriving while a batch runs join "
        "it between two steps.",
    )
    p.add_argument("checkpoint", help="run or checkpoint folder of attnlab train, or a fine-tuned run")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (default: the {API_KEY_ENV} environment "
                        "variable; unset: no key)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. https://example.org) call the API; repeatable "
                        "(default: none, cross-origin requests are refused)")
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
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds a client may take to send its request; slower connections are dropped")
    p.add_argument("--keepalive-timeout", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open")
    p.add_argument("--max-connections", type=int, default=1000,
                   help="open connections at most; beyond it new requests get 503")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on Ctrl-C / SIGTERM, seconds to let requests in flight finish")
    p.add_argument("--model-name", default=None, help="model id reported by the API (default: the run folder name)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--no-request-log", action="store_true", help="do not log each request")
    p.add_argument("--quiet", dest="no_request_log", action="store_true", help=argparse.SUPPRESS)  # old name
    add_weight_flags(p)
    p.set_defaults(func=run)


def _check_flags(args: argparse.Namespace) -> None:
    """One line naming the first bad flag value (exit 2)."""
    from attnlab.errors import AttnlabError

    if not 0 <= args.port <= 65535:
        raise AttnlabError(f"--port must be in 0..65535, got {args.port}")
    for flag, value, low in (("--max-body-bytes", args.max_body_bytes, 1), ("--max-batch", args.max_batch, 1),
                             ("--max-concurrency", args.max_concurrency, 1), ("--gather-ms", args.gather_ms, 0),
                             ("--request-timeout", args.request_timeout, 0),
                             ("--shutdown-timeout", args.shutdown_timeout, 0),
                             ("--max-connections", args.max_connections, 1)):
        if not value >= low:  # also refuses NaN
            raise AttnlabError(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--read-timeout", args.read_timeout), ("--keepalive-timeout", args.keepalive_timeout)):
        if not value > 0 or value == float("inf"):
            raise AttnlabError(f"{flag} must be a positive number of seconds, got {value}")
    if args.api_key is not None and not args.api_key.strip():
        raise AttnlabError("--api-key is empty; pass a key, or leave it out for no key")
    for origin in args.cors_origin:
        if not origin.startswith(("http://", "https://")) or origin.rstrip("/") != origin:
            raise AttnlabError(f"--cors-origin must be an origin like https://example.org (scheme and host, no "
                               f"path or trailing slash), got {origin!r}")


def _request_log(enabled: bool) -> None:
    """Per-request lines of :mod:`attnlab.serve.app` (id, route, n, token counts, user) on stderr."""
    import logging

    log = logging.getLogger("attnlab.serve")
    log.propagate = False
    log.handlers.clear()
    if enabled:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("attnlab serve: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if enabled else logging.WARNING)


def _explorer(model, tokenizer, name: str):
    """The attention explorer on a twin of the served model, or None for a model it cannot show.

    The twin has its own modules (the explorer sets capture hooks on them while the scheduler's
    thread keeps decoding on the original) but shares every parameter and buffer tensor, so it
    costs no weight memory.
    """
    import copy
    import itertools

    from attnlab.errors import AttnlabError
    from attnlab.viz.explorer import Explorer

    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    twin = copy.deepcopy(model, memo=shared)
    try:
        return Explorer(twin, tokenizer, name=name)
    except AttnlabError:
        return None


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from attnlab.cli._chat import load_chat_model
    from attnlab.data.chat import template_name
    from attnlab.errors import AttnlabError
    from attnlab.serve.app import create_app
    from attnlab.serve.batcher import BatchConfig
    from attnlab.serve.engine import Engine
    from attnlab.serve.runner import ServeConfig, serve
    from attnlab.serve.security import SecurityConfig, bind_warning

    if args.api_key is None:
        args.api_key = os.environ.get(API_KEY_ENV) or None
    _check_flags(args)
    limits = BatchConfig(args.max_batch, args.gather_ms, args.max_concurrency, args.request_timeout or None,
                         join=not args.no_join)
    model, tok, template, device, weights = load_chat_model(args.checkpoint, args.device, args.dtype, args.quantize)
    name = args.model_name or Path(args.checkpoint).resolve().name
    engine = Engine(model, tok, device, name, max_tokens_cap=args.max_tokens_cap, batch=limits, template=template)
    security = SecurityConfig(api_key=args.api_key, cors_origins=tuple(args.cors_origin), bind_host=args.host,
                              max_body_bytes=args.max_body_bytes)
    explorer = _explorer(model, tok, name)
    app = create_app(engine, explorer=explorer, security=security)
    cfg = ServeConfig(host=args.host, port=args.port, read_timeout=args.read_timeout,
                      keepalive_timeout=args.keepalive_timeout, max_connections=args.max_connections,
                      shutdown_timeout=args.shutdown_timeout, access_log=not args.no_request_log)
    _request_log(not args.no_request_log)

    def banner(url: str) -> None:
        print(f"attnlab serve: {name} on {url} (context {engine.context}, max_tokens cap {engine.max_tokens_cap}, "
              f"max batch {args.max_batch}{', API key required' if args.api_key else ''}); Ctrl-C to stop",
              file=sys.stderr, flush=True)
        print(f"attnlab serve: {weights.line()}", file=sys.stderr, flush=True)
        print(f"attnlab serve: chat template: {template_name(template)}", file=sys.stderr, flush=True)
        print(f"attnlab serve: attention explorer: {url}/explorer" if explorer is not None else
              "attnlab serve: attention explorer: off (this model has no softmax attention weights to show)",
              file=sys.stderr, flush=True)
        warning = bind_warning(args.host, args.api_key)
        if warning:
            print(f"attnlab serve: {warning}", file=sys.stderr, flush=True)

    def drain() -> None:
        if not engine.close(args.shutdown_timeout):
            print(f"attnlab serve: requests still running after {args.shutdown_timeout} s were ended",
                  file=sys.stderr, flush=True)

    try:
        serve(app, cfg, banner, drain)
    except OSError as e:
        engine.close(0)
        raise AttnlabError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); pick another --port") \
            from None
    print("attnlab serve: stopped", file=sys.stderr, flush=True)
    return 0
