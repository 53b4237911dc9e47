"""The attention explorer: a small web page that shows what a checkpoint attends to.

``attnlab viz serve CKPT`` starts it. Routes:

- ``GET /``: the page (``viz/static/explorer.html``, plain HTML + inline JS, works offline).
- ``GET /api/info``: the model's name and config summary.
- ``POST /api/attention`` with ``{"text": "..."}``: the text's tokens, every layer's and
  head's attention weights ``weights[layer][head][query][key]`` (rounded), and the top-k
  next-token distribution (after the last token, plus after every position).

Bad requests get a JSON error ``{"error": {"message", ...}}`` with a 4xx status, never a
crash. The model runs one request at a time (:attr:`Explorer.lock`)::

    explorer = Explorer(model, tokenizer, name="demo")
    server = make_explorer_server(explorer, ExplorerConfig(port=0))
    serve_until_stopped(server)          # Ctrl-C / SIGTERM stop it cleanly
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import nn

from attnlab.data import Tokenizer
from attnlab.data.mlm import MASK_TOKEN
from attnlab.errors import AttnlabError
from attnlab.serve.protocol import RequestError
from attnlab.serve.server import Handler, serve_until_stopped
from attnlab.viz.capture import attention_layers, capture_attention

STATIC_DIR = Path(__file__).parent / "static"
PAGE_FILE = "explorer.html"
ARCHS = ("decoder", "encoder")  # decoder: next-token distribution; encoder: prediction at <|mask|>


@dataclass
class ExplorerConfig:
    """Explorer server settings.

    Attributes:
        host: interface to bind.
        port: TCP port (0: any free port; read it back from ``server.server_address``).
        max_body_bytes: larger request bodies are refused with 413.
        max_tokens: longest text in tokens (also capped by the model's context); the
            weights of a T-token text are ``n_layer * n_head * T * T`` numbers.
        top_k: how many candidates of the next-token distribution to return.
        decimals: attention weights and probabilities are rounded to this many decimals.
        log_requests: print one line per request to stderr.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    max_body_bytes: int = 65_536
    max_tokens: int = 128
    top_k: int = 10
    decimals: int = 4
    log_requests: bool = True

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_tokens", "top_k"):
            if getattr(self, name) < 1:
                raise AttnlabError(f"{name} (--{name.replace('_', '-')}) must be positive, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise AttnlabError(f"--port must be in 0..65535, got {self.port}")
        if not 1 <= self.decimals <= 8:
            raise AttnlabError(f"explorer decimals must be in 1..8, got {self.decimals}")


class Explorer:
    """Runs a text through a model and returns what the page draws.

    Args:
        model: a decoder-only LM (``DecoderLM``) or a masked-LM encoder
            (``EncoderForMaskedLM``) with softmax attention, in eval mode.
        tokenizer: the checkpoint's tokenizer.
        name: the model name shown on the page.
        cfg: limits and rounding (:class:`ExplorerConfig`).

    Raises:
        AttnlabError: the model is of another architecture or has no attention weights.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, name: str = "model",
                 cfg: ExplorerConfig | None = None):
        mc = getattr(model, "config", None)
        arch = getattr(mc, "arch", None)
        if arch not in ARCHS:
            raise AttnlabError(f"the attention explorer shows decoder-only and encoder (masked LM) models; this one "
                               f"is model.arch={arch}: use `attnlab viz attention` for it")
        if mc.mixer != "softmax" or not attention_layers(model):
            raise AttnlabError(f"model.mixer={mc.mixer} has no attention weights to show; the explorer needs "
                               "softmax attention")
        self.model, self.tokenizer, self.name, self.arch = model, tokenizer, name, arch
        self.cfg = cfg or ExplorerConfig()
        self.model_config = mc
        self.context = int(getattr(model, "max_context", mc.block_size))
        self.max_tokens = min(self.context, self.cfg.max_tokens)
        self.device = next(model.parameters()).device
        self.mask_id = tokenizer.token_id(MASK_TOKEN) if arch == "encoder" else None
        self.lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Model name and config summary (``GET /api/info``)."""
        mc = self.model_config
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name, "arch": self.arch, "n_layer": len(attention_layers(self.model)),
            "n_head": mc.n_head, "n_kv_head": mc.n_kv_head or mc.n_head, "d_model": mc.d_model,
            "vocab_size": mc.vocab_size, "context": self.context, "position": mc.position, "norm": mc.norm,
            "norm_placement": mc.norm_placement, "mlp": mc.mlp, "parameters": n_params,
            "max_tokens": self.max_tokens, "top_k": self.cfg.top_k,
            "prediction": "next token" if self.arch == "decoder" else f"masked token at {MASK_TOKEN}",
            "mask_token": MASK_TOKEN if self.mask_id is not None else None,
        }

    def analyze(self, text: Any) -> dict[str, Any]:
        """Tokens, attention weights and predictions for ``text`` (``POST /api/attention``).

        Returns:
            ``{"tokens", "ids", "n_layer", "n_head", "weights", "next_token",
            "next_token_by_position", "prediction_position"}`` where ``weights`` is
            ``[layer][head][query][key]`` and each ``next_token*`` list holds
            ``{"token", "id", "prob"}`` of the top-k candidates. For a decoder the
            distribution is the one after the last token (``next_token_by_position[i]``:
            after token ``i``); for an encoder it is the prediction at the first
            ``<|mask|>`` token (empty when the text has none).

        Raises:
            RequestError: (400) ``text`` is missing, not a string, empty, or longer than
                :attr:`max_tokens` tokens.
        """
        if not isinstance(text, str):
            raise RequestError(400, "send {\"text\": \"...\"}: a JSON string to look at", param="text",
                               code="invalid_text")
        if len(text) > 64 * self.max_tokens:  # no tokenizer call on huge strings
            raise RequestError(400, f"text is {len(text)} characters, far over the limit of {self.max_tokens} "
                               "tokens; send a shorter text", param="text", code="text_too_long")
        ids = self.tokenizer.encode(text)
        if not ids:
            raise RequestError(400, "text is empty (no tokens); type something to look at", param="text",
                               code="empty_text")
        if len(ids) > self.max_tokens:
            why = "the model's context" if self.max_tokens == self.context else "the explorer's --max-tokens"
            raise RequestError(400, f"text is {len(ids)} tokens, over the limit of {self.max_tokens} ({why}); "
                               "send a shorter text", param="text", code="text_too_long")
        x = torch.tensor([ids], device=self.device)  # (1, T)
        with self.lock, torch.no_grad(), capture_attention(self.model) as cap:
            logits = self.model(x)  # (1, T, V)
        weights = torch.stack([cap.weights[i][0] for i in cap.layers])  # (L, H, T, T)
        probs = logits[0].double().softmax(dim=-1)  # (T, V)
        by_position = [self._top_k(p) for p in probs] if self.arch == "decoder" else []
        if self.arch == "decoder":
            at: int | None = len(ids) - 1
        else:
            at = ids.index(self.mask_id) if self.mask_id in ids else None
        return {
            "tokens": self.tokenizer.token_strings(ids), "ids": ids,
            "n_layer": int(weights.shape[0]), "n_head": int(weights.shape[1]),
            "weights": self._round(weights).tolist(),
            "next_token": self._top_k(probs[at]) if at is not None else [],
            "next_token_by_position": by_position, "prediction_position": at,
        }

    def _round(self, t: torch.Tensor) -> torch.Tensor:
        """Round to ``decimals`` in float64 (short JSON numbers); a positive weight never rounds to 0.

        An exact 0 then means "masked" (never attended), which the page draws grey; a tiny
        positive weight becomes the smallest step ``10**-decimals``.
        """
        scale = 10.0 ** self.cfg.decimals
        r = (t.double() * scale).round() / scale  # division: 1234 / 1e4 prints as 0.1234
        return torch.where((r == 0) & (t > 0), torch.full_like(r, 1 / scale), r)

    def _top_k(self, p: torch.Tensor) -> list[dict[str, Any]]:  # p: (V,) probabilities
        vals, idx = p.topk(min(self.cfg.top_k, p.numel()))
        ids = idx.tolist()
        names = self.tokenizer.token_strings(ids)
        return [{"token": s, "id": i, "prob": v}
                for s, i, v in zip(names, ids, self._round(vals).tolist(), strict=False)]


def read_page() -> bytes:
    """The explorer page's HTML.

    Raises:
        AttnlabError: the page is missing from the installed package.
    """
    path = STATIC_DIR / PAGE_FILE
    if not path.is_file():
        raise AttnlabError(f"the explorer page {path} is missing; reinstall attnlab (it ships viz/static/*.html)")
    return path.read_bytes()


class ExplorerServer(ThreadingHTTPServer):
    """A threading HTTP server holding the :class:`Explorer`, its config and the page."""

    daemon_threads = True

    def __init__(self, explorer: Explorer, cfg: ExplorerConfig):
        self.explorer, self.cfg, self.page = explorer, cfg, read_page()
        super().__init__((cfg.host, cfg.port), ExplorerHandler)

    @property
    def url(self) -> str:
        """``http://host:port/`` as bound (the real port when ``port=0``)."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class ExplorerHandler(Handler):
    """The explorer's routes; JSON plumbing and error handling come from :class:`attnlab.serve.server.Handler`."""

    server: ExplorerServer  # type: ignore[assignment]
    server_version = "attnlab-viz"

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            page = self.server.page
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(page)
        elif path == "/api/info":
            self._send_json(200, self.server.explorer.info())
        else:
            raise RequestError(404, f"no route GET {path}; try / or /api/info", code="not_found")

    def _post(self) -> None:
        path = urlsplit(self.path).path
        if path != "/api/attention":
            raise RequestError(404, f"no route POST {path}; try /api/attention", code="not_found")
        body = self._read_json()
        self._send_json(200, self.server.explorer.analyze(body.get("text")))


def make_explorer_server(explorer: Explorer, cfg: ExplorerConfig | None = None) -> ExplorerServer:
    """A bound (not yet serving) explorer server; ``serve_forever()`` it, ``shutdown()`` from another thread.

    Raises:
        AttnlabError: the address cannot be bound (port in use, bad host).
    """
    cfg = cfg or explorer.cfg
    try:
        return ExplorerServer(explorer, cfg)
    except OSError as e:
        raise AttnlabError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror}); pick another --port") from None


__all__ = ["Explorer", "ExplorerConfig", "ExplorerHandler", "ExplorerServer", "make_explorer_server", "read_page",
           "serve_until_stopped"]
