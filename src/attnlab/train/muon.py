"""Muon for FSDP2-sharded matrices: one all-gather per matrix and step.

:class:`torch.optim.Muon` orthogonalises each update with a Newton–Schulz iteration (about
fifteen matrix products). On FSDP2's DTensor shards every one of those products is a
distributed matmul that gathers its operands again, which made a Muon step several times
slower than the forward and backward passes. :class:`ShardedMuon` keeps the momentum
sharded (it is elementwise), gathers the Nesterov update once, orthogonalises the whole
matrix on every rank (the same result everywhere, no further communication) and lets each
rank apply its own rows. The arithmetic is Muon's own: PyTorch's Newton–Schulz and
learning-rate adjustment functions are called, not rewritten, so the result equals
``torch.optim.Muon`` on the unsharded model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def _muon_math() -> tuple[Callable[..., torch.Tensor], Callable[..., float]]:
    """PyTorch's Newton–Schulz orthogonalisation and Muon's learning-rate adjustment."""
    try:
        from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz
    except ImportError as e:  # a PyTorch whose Muon is laid out differently
        raise RuntimeError(f"train.optimizer=muon with FSDP needs torch.optim._muon's helpers ({e}); "
                           "use train.parallel=ddp or train.optimizer=adamw with this PyTorch") from e
    return _zeropower_via_newtonschulz, _adjust_lr


class ShardedMuon(torch.optim.Muon):
    """:class:`torch.optim.Muon` whose step gathers each sharded (DTensor) update once.

    Takes the same arguments and keeps the same state (``momentum_buffer`` per parameter,
    sharded like it), so checkpoints are interchangeable with ``torch.optim.Muon``'s.
    Plain-tensor parameters step exactly as in ``torch.optim.Muon``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._orthogonalise, self._adjust_lr = _muon_math()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)  # local shards: elementwise
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                whole = update.full_tensor() if isinstance(update, DTensor) else update  # (out, in): one all-gather
                ortho = self._orthogonalise(whole, group["ns_coefficients"], group["ns_steps"], group["eps"])
                if isinstance(update, DTensor):  # this rank's rows of the same result, no communication
                    ortho = distribute_tensor(ortho, update.device_mesh, update.placements, src_data_rank=None)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(ortho, alpha=-self._adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


__all__ = ["ShardedMuon"]
