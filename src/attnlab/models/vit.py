"""Vision Transformer (Dosovitskiy et al., 2021): images as sequences of patches, same blocks as text.

An image is cut into non-overlapping ``patch_size × patch_size`` patches; each flattened
patch is projected to ``d_model`` (a linear layer, equivalent to a strided convolution),
a learnable class token is put in front, position embeddings are added, and the
sequence runs through the very same bidirectional
:class:`~attnlab.models.stack.TransformerStack` a text encoder uses. The class token's final state is classified::

    vit = VisionTransformer(cfg, image_size=8, patch_size=2, channels=1, n_classes=10)
    logits = vit(images)                                   # (B, C, H, W) → (B, 10)
    logits, weights = vit(images, return_weights=True)     # weights[l]: (B, heads, 1+P, 1+P)
    maps = class_token_attention(weights, vit.grid)        # (L, B, heads, gh, gw)

Every position scheme of :class:`~attnlab.config.ModelConfig` works (``learned`` as in the
paper; patches are numbered row by row, the class token is position 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from attnlab.config import ModelConfig
from attnlab.errors import ConfigError
from attnlab.models.common import Model, init_bert_weights
from attnlab.models.stack import TransformerStack


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    """``8`` or ``(8, 8)`` → ``(8, 8)``, positive."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ConfigError(f"{what} must be positive, got {size}")
    return int(h), int(w)


class PatchEmbedding(nn.Module):
    """Cut images into patches and project each flattened patch to ``d_model``.

    Patches are taken row by row (left to right, top to bottom); a patch is flattened
    channel-major, i.e. as ``patch[c, i, j]`` in C order. A linear layer over these vectors
    is the same map as a ``Conv2d(kernel=stride=patch_size)``.

    Args:
        image_size: ``H`` for square images, or ``(H, W)``.
        patch_size: side of a square patch; must divide ``H`` and ``W``.
        channels: colour channels ``C``.
        d_model: output width.
        bias: whether the projection has a bias.
    """

    def __init__(self, image_size: int | Sequence[int], patch_size: int, channels: int, d_model: int,
                 bias: bool = True):
        super().__init__()
        self.image_size = _pair(image_size, "image_size")
        if patch_size <= 0 or channels <= 0:
            raise ConfigError(f"patch_size and channels must be positive, got {patch_size} and {channels}")
        h, w = self.image_size
        if h % patch_size or w % patch_size:
            raise ConfigError(f"patch_size={patch_size} does not divide the image size {h}×{w}; "
                              "pick a patch size that divides both sides")
        self.patch_size = patch_size
        self.channels = channels
        self.grid = (h // patch_size, w // patch_size)
        self.n_patches = self.grid[0] * self.grid[1]
        self.proj = nn.Linear(channels * patch_size * patch_size, d_model, bias=bias)

    def check(self, images: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` is (B, C, H, W) with this module's C, H, W."""
        want = (self.channels, *self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"images must have shape (B, {want[0]}, {want[1]}, {want[2]}) (channels, height, "
                             f"width), got {tuple(images.shape)}; resize the images or build the model for this size")

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, P, C·p·p) flattened patches, P = (H/p)·(W/p) in row-major order."""
        self.check(images)
        b, c = images.shape[:2]
        p = self.patch_size
        gh, gw = self.grid
        x = images.reshape(b, c, gh, p, gw, p)  # (B, C, gh, p, gw, p)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
        return x.reshape(b, gh * gw, c * p * p)  # (B, P, C·p·p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, P, d_model) patch embeddings."""
        return self.proj(self.patches(images))


class VisionTransformer(TransformerStack, Model):
    """Patch embedding + class token + positions → encoder blocks → norm → linear head on the class token.

    Args:
        cfg: the encoder's architecture (``arch: encoder``; width, depth, heads, norm, MLP,
            positions, dropout). ``block_size`` must cover the ``1 + n_patches`` tokens.
        image_size: ``H`` (square) or ``(H, W)``.
        patch_size: side of a square patch.
        channels: colour channels.
        n_classes: number of classes of the head.

    Raises:
        ConfigError: a patch size that does not divide the image, too small a ``block_size``,
            a non-encoder ``arch``, or a sliding window (patches attend to all patches).
    """

    def __init__(self, cfg: ModelConfig, image_size: int | Sequence[int], patch_size: int, channels: int,
                 n_classes: int):
        super().__init__()
        if cfg.arch != "encoder":
            raise ConfigError(f"a Vision Transformer is an encoder; set model.arch=encoder (got '{cfg.arch}')")
        if cfg.attention.window is not None:
            raise ConfigError("the Vision Transformer attends over all patches; set model.attention.window=null")
        if n_classes < 1:
            raise ConfigError(f"n_classes must be >= 1, got {n_classes}")
        self.config = cfg
        self.patch_embed = PatchEmbedding(image_size, patch_size, channels, cfg.d_model, cfg.bias)
        self.grid = self.patch_embed.grid
        n_tokens = 1 + self.patch_embed.n_patches
        if cfg.block_size < n_tokens:
            raise ConfigError(f"model.block_size={cfg.block_size} is smaller than the 1 + {n_tokens - 1} patch tokens "
                              f"of a {self.patch_embed.image_size} image; set model.block_size={n_tokens}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.init_positions(cfg, causal=False)
        self.init_blocks(cfg, cfg.n_layer)
        self.head = nn.Linear(cfg.d_model, n_classes)
        init_bert_weights(self)

    @property
    def n_classes(self) -> int:
        """Number of classes of the head."""
        return self.head.out_features

    def encode(
        self, images: torch.Tensor, *, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Hidden states of the class token and every patch.

        Args:
            images: (B, C, H, W) float images.
            return_weights: also return each layer's attention weights (eager backend).

        Returns:
            (B, 1+P, d_model) final-normed states (row 0: the class token), or
            ``(states, [weights per layer])`` with weights (B, heads, 1+P, 1+P).

        Raises:
            ValueError: images of another shape than the model was built for.
        """
        patches = self.patch_embed(images)  # (B, P, D)
        b, p, _ = patches.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(patches.dtype), patches], dim=1)  # (B, 1+P, D)
        positions = torch.arange(1 + p, device=images.device)  # (1+P,)
        x = self.embed_positions(x, positions)  # (B, 1+P, D)
        out = self.run_blocks(x, positions, score_mod=self.score_mod(), return_weights=return_weights)  # no mask
        return (out.hidden, out.weights) if return_weights else out.hidden  # (B, 1+P, D), (B, H, 1+P, 1+P) each

    def forward(
        self, images: torch.Tensor, *, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, H, W) images → (B, n_classes) logits, or ``(logits, [weights per layer])``.

        See :meth:`encode` for the arguments; the weights are (B, heads, 1+P, 1+P).
        """
        out = self.encode(images, return_weights=return_weights)
        hidden, weights = out if return_weights else (out, None)
        logits = self.head(hidden[:, 0])  # (B, n_classes)
        return (logits, weights) if return_weights else logits


def class_token_attention(weights: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """The class token's attention over the patch grid, per layer and head.

    Args:
        weights: per-layer weights (B, H, 1+P, 1+P) from ``VisionTransformer(..., return_weights=True)``.
        grid: ``(gh, gw)`` patches per column and row (``VisionTransformer.grid``).

    Returns:
        (L, B, H, gh, gw): row 0 of each attention matrix without the class token's weight on
        itself (so a map sums to ``1 - weight on the class token``).
    """
    w = torch.stack(list(weights))  # (L, B, H, 1+P, 1+P)
    gh, gw = grid
    if w.shape[-1] != 1 + gh * gw:
        raise ValueError(f"weights cover {w.shape[-1] - 1} patches, not the {gh}×{gw} grid; "
                         "pass VisionTransformer.grid")
    return w[..., 0, 1:].reshape(*w.shape[:3], gh, gw)  # (L, B, H, gh, gw)
