"""Optimizer construction: AdamW, or Muon for hidden weight matrices beside AdamW.

Every parameter group carries ``base_lr``, its peak learning rate; :func:`set_lr` scales
all groups by the schedule, so Muon's and AdamW's rates follow one warmup + cosine shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnlab.config import TrainConfig
from attnlab.errors import ConfigError


class OptimizerGroup:
    """Several torch optimizers that step, zero and save as one.

    Quacks like :class:`torch.optim.Optimizer` for the training loops (``param_groups``,
    ``step``, ``zero_grad``, ``state_dict``, ``load_state_dict``); :attr:`optimizers` is the
    list that :mod:`torch.distributed.checkpoint` takes.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("optimizers")
        if not isinstance(saved, list) or len(saved) != len(self.optimizers):
            raise ConfigError(
                "the checkpoint's optimizer state was saved with another train.optimizer; "
                "resume with the optimizer it was trained with"
            )
        for opt, s in zip(self.optimizers, saved, strict=True):
            opt.load_state_dict(s)


def torch_optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    """The plain torch optimizers inside ``optimizer`` (itself, or an :class:`OptimizerGroup`'s)."""
    return list(optimizer.optimizers) if isinstance(optimizer, OptimizerGroup) else [optimizer]


def set_lr(optimizer: Any, lr: float, peak_lr: float) -> None:
    """Scale every group's ``base_lr`` by ``lr / peak_lr`` (the schedule's current fraction)."""
    for group in optimizer.param_groups:
        base = group.get("base_lr", peak_lr)
        group["lr"] = lr if base == peak_lr else base * lr / peak_lr


def _muon_matrices(model: nn.Module) -> list[nn.Parameter]:
    """2-D weights of the hidden layers: the linear maps inside blocks (no embeddings, no heads)."""
    from attnlab.blocks import Block  # local import: blocks pull in the attention stack

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    found: dict[int, nn.Parameter] = {}
    for block in (m for m in model.modules() if isinstance(m, Block)):
        for p in block.parameters():
            if p.requires_grad and p.dim() == 2 and id(p) not in embeddings:
                found[id(p)] = p
    return list(found.values())


def build_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer | OptimizerGroup:
    """The optimizer ``cfg.optimizer`` names.

    ``"adamw"``: AdamW with weight decay on matrices and embeddings, none on biases and norm
    gains (the fused CUDA kernel on GPU). ``"muon"``: :class:`torch.optim.Muon` (lr
    ``cfg.muon_lr``, momentum ``cfg.muon_momentum``, decoupled weight decay) for the hidden
    layers' 2-D weight matrices, and AdamW as above for everything else (embeddings, output
    head, norms, biases), combined in an :class:`OptimizerGroup`; on FSDP2-sharded
    parameters Muon is :class:`~attnlab.train.muon.ShardedMuon` (the same arithmetic, one
    all-gather per matrix and step).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    muon = _muon_matrices(model) if cfg.optimizer == "muon" else []
    if cfg.optimizer == "muon" and not muon:
        raise ConfigError(
            "train.optimizer=muon found no hidden weight matrices in this model; use train.optimizer=adamw"
        )
    in_muon = {id(p) for p in muon}
    rest = [p for p in params if id(p) not in in_muon]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "base_lr": cfg.lr},
    ]
    adamw = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
        fused=device_type == "cuda",
    )
    if not muon:
        return adamw
    from torch.distributed.tensor import DTensor

    from attnlab.train.muon import ShardedMuon  # FSDP2 shards (DTensor): one gather per matrix and step

    muon_cls = ShardedMuon if any(isinstance(p, DTensor) for p in muon) else torch.optim.Muon
    matrices = muon_cls(
        [{"params": muon, "base_lr": cfg.muon_lr}], lr=cfg.muon_lr, momentum=cfg.muon_momentum,
        weight_decay=cfg.weight_decay,
    )
    return OptimizerGroup([matrices, adamw])
