"""The attention explorer's computation: what a checkpoint attends to, as JSON for a web page.

:class:`Explorer` runs a text through a model and returns its tokens, every layer's and
head's attention weights ``weights[layer][head][query][key]`` (rounded) and the top-k
next-token distribution (after the last token, plus after every position). The page
(``viz/static/explorer.html``) and its routes live on the server's ASGI app
(``attnlab.serve.pages``: ``GET /explorer``, ``GET /explorer/api/info``,
``POST /explorer/api/attention``); ``attnlab viz serve CKPT`` runs that app with only the
explorer. Bad input raises :class:`ExplorerInputError`, which the app answers with a 400.
The model runs one text at a time (:attr:`Explorer.lock`)::

    explorer = Explorer(model, tokenizer, name="demo")
    out = explorer.analyze("ROMEO. But soft, what light")   # {"tokens", "weights", "next_token", ...}
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.data import Tokenizer
from attnlab.data.mlm import MASK_TOKEN
from attnlab.errors import AttnlabError
from attnlab.viz.capture import attention_layers, capture_attention

STATIC_DIR = Path(__file__).parent / "static"
PAGE_FILE = "explorer.html"
ARCHS = ("decoder", "encoder")  # decoder: next-token distribution; encoder: prediction at <|mask|>


class ExplorerInputError(AttnlabError):
    """A text the explorer cannot look at (the server answers 400 with this message).

    Args:
        message: one line naming the problem and the fix.
        param: the offending request field.
        code: a short machine-readable code (``invalid_text``, ``empty_text``, ``text_too_long``).
    """

    def __init__(self, message: str, *, param: str = "text", code: str = "invalid_text"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass
class ExplorerConfig:
    """What the explorer computes and returns.

    Attributes:
        max_tokens: longest text in tokens (also capped by the model's context); the
            weights of a T-token text are ``n_layer * n_head * T * T`` numbers.
        top_k: how many candidates of the next-token distribution to return.
        decimals: attention weights and probabilities are rounded to this many decimals.
    """

    max_tokens: int = 128
    top_k: int = 10
    decimals: int = 4

    def __post_init__(self) -> None:
        for name in ("max_tokens", "top_k"):
            if getattr(self, name) < 1:
                raise AttnlabError(f"{name} (--{name.replace('_', '-')}) must be positive, got {getattr(self, name)}")
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
        """Model name and config summary (``GET /explorer/api/info``)."""
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
        """Tokens, attention weights and predictions for ``text`` (``POST /explorer/api/attention``).

        Returns:
            ``{"tokens", "ids", "n_layer", "n_head", "weights", "next_token",
            "next_token_by_position", "prediction_position"}`` where ``weights`` is
            ``[layer][head][query][key]`` and each ``next_token*`` list holds
            ``{"token", "id", "prob"}`` of the top-k candidates. For a decoder the
            distribution is the one after the last token (``next_token_by_position[i]``:
            after token ``i``); for an encoder it is the prediction at the first
            ``<|mask|>`` token (empty when the text has none).

        Raises:
            ExplorerInputError: ``text`` is not a string, is not valid Unicode (a lone
                surrogate), is empty, or is longer than :attr:`max_tokens` tokens.
        """
        if not isinstance(text, str):
            raise ExplorerInputError("send {\"text\": \"...\"}: a JSON string to look at", code="invalid_text")
        if len(text) > 64 * self.max_tokens:  # no tokenizer call on huge strings
            raise ExplorerInputError(f"text is {len(text)} characters, far over the limit of {self.max_tokens} "
                                     "tokens; send a shorter text", code="text_too_long")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ExplorerInputError(f"text has a lone surrogate {text[e.start]!a} at character {e.start}, which is "
                                     "not a character; send valid Unicode", code="invalid_text") from None
        ids = self.tokenizer.encode(text)
        if not ids:
            raise ExplorerInputError("text is empty (no tokens); type something to look at", code="empty_text")
        if len(ids) > self.max_tokens:
            why = "the model's context" if self.max_tokens == self.context else "the explorer's --max-tokens"
            raise ExplorerInputError(f"text is {len(ids)} tokens, over the limit of {self.max_tokens} ({why}); "
                                     "send a shorter text", code="text_too_long")
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


__all__ = ["Explorer", "ExplorerConfig", "ExplorerInputError"]
