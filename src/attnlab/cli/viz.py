"""Look at a checkpoint's attention: PNG heatmaps (viz attention) or the explorer web page (viz serve).

    attnlab viz attention runs/demo --text "ROMEO. But soft, what light" --layers 0,3 --heads 0,2
    attnlab viz serve runs/demo --port 8765      # open the printed URL (/explorer), type text, hover tokens
"""

from __future__ import annotations

import argparse

from attnlab.errors import AttnlabError

EXPLORER_BODY = 65_536  # bytes: a request body holds one short text


def int_list(value: str | None, option: str) -> list[int] | None:
    """Parse ``"0,2,3"`` into ``[0, 2, 3]`` (None stays None).

    Raises:
        AttnlabError: a piece is not an integer.
    """
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise AttnlabError(f"{option} must be comma-separated integers like 0,2, got '{value}'") from None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``viz`` and its actions (``attention``, ``serve``)."""
    parser = sub.add_parser("viz", help="visualise a model (attention heatmaps)", description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser(
        "attention",
        help="heatmaps of attention weights for a text (rows = layers, columns = heads)",
        description="Run TEXT through a checkpoint and write a PNG grid of attention heatmaps. "
        "Only the selected layers run the weight-returning eager path.",
    )
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--text", required=True, help="the input text")
    p.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    p.add_argument("--heads", default=None, help="comma-separated head indices (default: all)")
    p.add_argument("--out", default="attention.png", help="PNG to write")
    p.add_argument("--max-tokens", type=int, default=40, help="draw at most the last N tokens")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    s = actions.add_parser(
        "serve",
        help="the attention explorer: a web page showing tokens, attention heatmaps and next-token probabilities",
        description="Serve a small web page for a checkpoint: type text, see its tokens, the attention weights of "
        "every layer and head as heatmaps (hover a token to see where it attends) and the next-token "
        "distribution. Routes: GET /explorer (the page; / redirects there), GET /explorer/api/info, "
        "POST /explorer/api/attention {\"text\": ...}; the API is described at /docs.",
    )
    s.add_argument("checkpoint", help="run folder or checkpoint folder (decoder-only or encoder model)")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    s.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port)")
    s.add_argument("--max-tokens", type=int, default=128,
                   help="longest text in tokens, also capped by the model's context")
    s.add_argument("--top-k", type=int, default=10, help="next-token candidates to show")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    s.add_argument("--no-request-log", action="store_true", help="do not log each request")
    s.add_argument("--quiet", dest="no_request_log", action="store_true", help=argparse.SUPPRESS)  # old name
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``viz attention`` or ``viz serve``."""
    return serve(args) if args.action == "serve" else attention(args)


def serve(args: argparse.Namespace) -> int:
    """Run ``viz serve``: the attention explorer on the server's app until Ctrl-C / SIGTERM."""
    import os
    import sys
    from pathlib import Path

    from attnlab.cli._common import load_for_inference
    from attnlab.serve.app import create_app
    from attnlab.serve.runner import ServeConfig
    from attnlab.serve.runner import serve as run_server
    from attnlab.serve.security import SecurityConfig
    from attnlab.viz import Explorer, ExplorerConfig

    if not 0 <= args.port <= 65535:  # the options are checked before the model loads
        raise AttnlabError(f"--port must be in 0..65535, got {args.port}")
    cfg = ExplorerConfig(max_tokens=args.max_tokens, top_k=args.top_k)
    model, tok, _, _ = load_for_inference(args.checkpoint, args.device)
    explorer = Explorer(model, tok, name=Path(args.checkpoint).resolve().name, cfg=cfg)
    security = SecurityConfig(bind_host=args.host, max_body_bytes=EXPLORER_BODY)
    app = create_app(None, explorer=explorer, security=security)

    def banner(url: str) -> None:
        print(f"attnlab viz serve: attention explorer for {explorer.name} at {url.rstrip('/')}/explorer "
              f"(texts up to {explorer.max_tokens} tokens); Ctrl-C to stop", file=sys.stderr, flush=True)

    try:
        run_server(app, ServeConfig(host=args.host, port=args.port, access_log=not args.no_request_log),
                   on_start=banner)
    except OSError as e:  # raised by the bind, before anything runs
        why = os.strerror(e.errno) if e.errno and e.errno > 0 else (e.strerror or str(e))  # gaierror: < 0
        raise AttnlabError(f"cannot listen on {args.host}:{args.port} ({why}); pick another --port or --host") from None
    print("attnlab viz serve: stopped", file=sys.stderr, flush=True)
    return 0


def attention(args: argparse.Namespace) -> int:
    """Run ``viz attention``."""
    from attnlab.cli._common import load_for_inference
    from attnlab.viz import attention_heatmap, attention_layers, check_indices

    if not args.text:
        raise AttnlabError("--text is empty; pass the text whose attention to draw")
    if args.max_tokens <= 0:
        raise AttnlabError(f"--max-tokens must be positive, got {args.max_tokens}")
    layers = int_list(args.layers, "--layers")
    heads = int_list(args.heads, "--heads")
    model, tok, _, _ = load_for_inference(args.checkpoint, args.device)
    ids = tok.encode(args.text)
    if not ids:
        raise AttnlabError("--text encodes to no tokens; pass a non-empty text")
    limit = model.max_context
    if len(ids) > limit:
        raise AttnlabError(f"--text is {len(ids)} tokens but the model's context is {limit} tokens; shorten it")
    mods = attention_layers(model)
    try:
        layer_ids = check_indices(layers, len(mods), "layer")
        check_indices(heads, min(mods[i].n_head for i in layer_ids), "head")
    except ValueError as e:
        raise AttnlabError(f"{e} (--layers/--heads)") from None
    out = attention_heatmap(model, tok, args.text, args.out, layers=layers, heads=heads, max_tokens=args.max_tokens)
    print(out)
    return 0
