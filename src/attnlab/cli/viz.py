"""``attnlab viz attention CKPT --text TEXT``: draw a checkpoint's attention as a PNG grid.

    attnlab viz attention runs/demo --text "ROMEO. But soft, what light" --layers 0,3 --heads 0,2
"""

from __future__ import annotations

import argparse
from typing import Optional

from attnlab.errors import AttnlabError


def int_list(value: Optional[str], option: str) -> Optional[list[int]]:
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
    """Register ``viz`` and its actions (``attention``)."""
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
    p.add_argument("--out", default="attention.png", help="PNG to write (default attention.png)")
    p.add_argument("--max-tokens", type=int, default=40, help="draw at most the last N tokens (default 40)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
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
