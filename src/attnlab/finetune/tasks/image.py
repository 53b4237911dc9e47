"""Image classification with a Vision Transformer trained from scratch (task ``image-classify``).

Records hold an image as a list of pixel values (flat, ``[H][W]`` or ``[C][H][W]``, any
nesting with ``channels × image_size × image_size`` numbers) and a label::

    {"image": [0, 0, 5, 13, 9, 1, 0, 0, ...64 values], "label": 0}

    attnlab data prepare digits --out data/digits
    attnlab finetune image-classify digits-vit

Pixels are divided by ``options.max_value`` (16 for the 8×8 digits, 255 for 8-bit
images). The model is :class:`~attnlab.models.vit.VisionTransformer` built from
``init: preset:NAME`` (e.g. ``preset:vit-tiny``); there is no tokenizer. The metric is
accuracy (macro F1 is reported too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.config import model_config_from_dict
from attnlab.data.tasks import require_columns
from attnlab.errors import AttnlabError, ConfigError
from attnlab.eval.classification import accuracy, precision_recall_f1
from attnlab.finetune.init import load_backbone
from attnlab.finetune.recipe import Task
from attnlab.models.vit import VisionTransformer

EVAL_BATCH = 256


@dataclass
class ImageOptions:
    """Options of ``image-classify``.

    Attributes:
        image_column: the record field holding the pixels.
        label_column: the record field holding the label (an integer or a string).
        image_size: side of the square images, in pixels.
        channels: colour channels (1: grey).
        patch_size: side of a square patch (must divide ``image_size``).
        max_value: pixel values lie in ``[0, max_value]`` and are divided by it.
        augment: ``"none"``, or ``"shift"``: during training move each image by up to
            one pixel in each direction (zero fill).
    """

    image_column: str = "image"
    label_column: str = "label"
    image_size: int = 8
    channels: int = 1
    patch_size: int = 2
    max_value: float = 16.0
    augment: Literal["none", "shift"] = "none"

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "patch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"options.{name} must be positive, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"options.patch_size={self.patch_size} does not divide "
                              f"options.image_size={self.image_size}; pick a divisor")
        if self.max_value <= 0:
            raise ConfigError(f"options.max_value must be positive (the brightest pixel), got {self.max_value}")


def random_shift(images: torch.Tensor, max_shift: int = 1) -> torch.Tensor:
    """Move each image by up to ``max_shift`` pixels along each axis, filling with zeros.

    Uses torch's global generator (seeded by the trainer), so runs stay reproducible.

    Args:
        images: (B, C, H, W).
        max_shift: largest shift in pixels.

    Returns:
        (B, C, H, W) shifted images.
    """
    b, c, h, w = images.shape
    s = max_shift
    padded = F.pad(images, (s, s, s, s))  # (B, C, H+2s, W+2s)
    dy, dx = torch.randint(0, 2 * s + 1, (2, b), device=images.device)  # (B,) each
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (B, W)
    bi = torch.arange(b, device=images.device)[:, None, None, None]
    ci = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


class ImageClassifyTask(Task):
    """Classify images with a ViT: the class token's final state → a linear head → softmax."""

    name = "image-classify"
    Options = ImageOptions
    metric = "accuracy"
    head_modules = ("head",)

    # -- data ---------------------------------------------------------------
    @property
    def _shape(self) -> tuple[int, int, int]:
        o = self.opt
        return o.channels, o.image_size, o.image_size

    def read(self, path: str) -> list[dict[str, Any]]:
        """Read records and check every image's size and value range and every label's type."""
        rows = super().read(path)
        o = self.opt
        require_columns(rows, [o.image_column, o.label_column], path,
                        hint="set options.image_column / options.label_column")
        c, h, w = self._shape
        for i, r in enumerate(rows):
            try:
                px = np.asarray(r[o.image_column], dtype=np.float64)
            except (TypeError, ValueError):
                raise AttnlabError(
                    f"'{path}' record {i}: '{o.image_column}' must be a (nested) list of numbers") from None
            if px.size != c * h * w:
                raise AttnlabError(
                    f"'{path}' record {i}: image has {px.size} values (shape {px.shape}); expected "
                    f"channels×size×size = {c}×{h}×{w} = {c * h * w}; set options.image_size / options.channels "
                    "to match the data")
            if not np.isfinite(px).all() or px.min() < 0 or px.max() > o.max_value:
                raise AttnlabError(
                    f"'{path}' record {i}: pixel values must lie in [0, options.max_value={o.max_value:g}], found "
                    f"{px.min():g}..{px.max():g}; set options.max_value to the brightest possible pixel (e.g. 255)")
            label = r[o.label_column]
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise AttnlabError(f"'{path}' record {i}: label {label!r} must be an integer or a string")
        return rows

    def splits(self) -> dict[str, list[dict[str, Any]]]:
        """The examples, checked up front: every validation and test label must occur in training."""
        splits = super().splits()
        col = self.opt.label_column
        known = {r[col] for r in splits["train"]}
        for name in ("val", "test"):
            for i, r in enumerate(splits[name]):
                if r[col] not in known:
                    raise AttnlabError(
                        f"{name} example {i} has label {r[col]!r}, which is not one of the {len(known)} training "
                        "labels; fix the data or add examples of it to training")
        return splits

    def image_tensor(self, record: dict[str, Any]) -> torch.Tensor:
        """One record's pixels as a (C, H, W) float tensor scaled to [0, 1]."""
        px = torch.as_tensor(np.asarray(record[self.opt.image_column], dtype=np.float32))
        if px.numel() != np.prod(self._shape):
            raise AttnlabError(f"image has {px.numel()} values, expected channels×size×size = "
                               f"{'×'.join(map(str, self._shape))}; check options.image_size / options.channels")
        return px.reshape(self._shape) / self.opt.max_value  # (C, H, W)

    def _label_index(self, examples: list[dict[str, Any]]) -> list[int]:
        """Class indices of the examples' labels; a label unseen in training is an error."""
        index = {label: i for i, label in enumerate(self.state["labels"])}
        out = []
        for i, r in enumerate(examples):
            label = r[self.opt.label_column]
            if label not in index:
                raise AttnlabError(
                    f"example {i} has label {label!r}, which is not one of the {len(index)} training labels "
                    f"{self.state['labels'][:20]}; fix the data or add examples of it to training")
            out.append(index[label])
        return out

    # -- model --------------------------------------------------------------
    def build(self, train: list[dict[str, Any]]) -> tuple[nn.Module, None]:
        """A ViT from ``init: preset:NAME`` with one output per training label; no tokenizer."""
        if self.cfg.tokenizer:
            raise ConfigError(f"tokenizer={self.cfg.tokenizer} is not used by image-classify (images are cut into "
                              "patches, not tokenized); remove the tokenizer setting")
        if not self.cfg.init.startswith("preset:"):
            raise ConfigError(f"image-classify trains a Vision Transformer from scratch; set init=preset:vit-tiny "
                              f"(or another encoder preset), got init='{self.cfg.init}'")
        labels = list({r[self.opt.label_column]: None for r in train})
        if len({type(v) for v in labels}) > 1:
            raise AttnlabError("labels mix integers and strings; use one kind in the label column")
        if len(labels) < 2:
            raise AttnlabError(f"training data has {len(labels)} distinct label(s); classification needs at least 2")
        cfg = load_backbone(self.cfg.init, self.cfg.model).config
        n_tokens = 1 + (self.opt.image_size // self.opt.patch_size) ** 2
        cfg = dataclasses.replace(cfg, block_size=n_tokens)
        o = self.opt
        self.state = {"labels": sorted(labels), "model": dataclasses.asdict(cfg), "image_size": o.image_size,
                      "patch_size": o.patch_size, "channels": o.channels}
        return self.restore(self.state, None), None

    def restore(self, state: dict[str, Any], tokenizer: Any) -> nn.Module:
        """The ViT described by ``state`` (weights loaded afterwards)."""
        return VisionTransformer(model_config_from_dict(state["model"]), state["image_size"], state["patch_size"],
                                 state["channels"], len(state["labels"]))

    # -- training -----------------------------------------------------------
    def features(self, examples: list[dict[str, Any]], tokenizer: Any) -> list[tuple[torch.Tensor, int]]:
        """``(image (C, H, W) in [0, 1], class index)`` per example."""
        return list(zip((self.image_tensor(r) for r in examples), self._label_index(examples), strict=False))

    def collate(self, features: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
        """``{"images": (B, C, H, W), "labels": (B,)}``."""
        return {"images": torch.stack([f[0] for f in features]),
                "labels": torch.tensor([f[1] for f in features], dtype=torch.long)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the class logits (with ``train.label_smoothing``; shifted images if asked)."""
        images = batch["images"]  # (B, C, H, W)
        if self.opt.augment == "shift" and model.training:
            images = random_shift(images)
        logits = model(images)  # (B, n_classes)
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.cfg.train.label_smoothing)

    def _predict_index(self, model: nn.Module, examples: list[dict[str, Any]]) -> list[int]:
        device = next(model.parameters()).device
        out: list[int] = []
        with torch.no_grad():
            for start in range(0, len(examples), EVAL_BATCH):
                images = torch.stack([self.image_tensor(r) for r in examples[start:start + EVAL_BATCH]])  # (B, C, H, W)
                out += model(images.to(device)).argmax(-1).tolist()
        return out

    def evaluate(self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Any) -> dict[str, float]:
        """``{"accuracy", "f1"}`` (macro F1 over the training labels)."""
        if not examples:
            raise AttnlabError("no examples to evaluate; check data.val / data.test")
        gold = self._label_index(examples)
        pred = self._predict_index(model, examples)
        classes = list(range(len(self.state["labels"])))
        return {"accuracy": accuracy(pred, gold),
                "f1": precision_recall_f1(pred, gold, "macro", classes=classes)["f1"]}

    def predict(self, model: nn.Module, examples: list[dict[str, Any]], tokenizer: Any) -> list[Any]:
        """The predicted label (as written in the data) of each example."""
        return [self.state["labels"][i] for i in self._predict_index(model, examples)]
