"""Training health: gradient norm, update/weight ratio, loss spikes and NaN/inf steps.

:class:`HealthMonitor` judges each optimizer step from its (global) loss and gradient norm:
a non-finite one is skipped (``train.nonfinite=skip``, stopping after ``max_nonfinite`` in
a row) or stops the run (``stop``); a loss far above the running mean is reported as a
spike. The loop then saves the last good state and raises :class:`NonFiniteError`, whose
one-line message says what happened and how to go on.

All functions work on plain tensors and on FSDP2's sharded ``DTensor`` parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from attnlab.errors import AttnlabError


class NonFiniteError(AttnlabError):
    """Training stopped on a NaN/inf loss or gradient; the last good state was saved."""


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _sharded(params: list[torch.Tensor]) -> bool:
    return any(isinstance(p, DTensor) for p in params)


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global L2 norm of the gradients (before clipping), clipping them to ``max_norm`` if > 0.

    Returns:
        The norm as a 0-d tensor (a full, not sharded, value under FSDP2).
    """
    params = [p for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def snapshot(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of this process's parameter values (its shards under FSDP2), for :func:`update_ratio`."""
    return [_local(p).detach().clone() for p in params]


@torch.no_grad()
def update_ratio(params: Iterable[torch.Tensor], before: list[torch.Tensor]) -> float:
    """‖θ_after − θ_before‖ / ‖θ_before‖ over all parameters (a healthy run sits near 1e-3).

    Sharded parameters are summed over processes; replicated ones (DDP) are not.
    """
    params = list(params)
    sq = torch.zeros(2, dtype=torch.float64, device=before[0].device if before else "cpu")
    for p, b in zip(params, before, strict=True):
        sq[0] += (_local(p).detach().double() - b.double()).pow(2).sum()
        sq[1] += b.double().pow(2).sum()
    if _sharded(params) and dist.is_initialized():
        dist.all_reduce(sq)
    update, weight = sq.tolist()
    return math.sqrt(update) / max(math.sqrt(weight), 1e-12)


@dataclass
class Verdict:
    """What to do with a step: ``action`` is ``"step"``, ``"skip"`` or ``"stop"``.

    Attributes:
        action: apply the update, skip it, or skip it and stop the run.
        nonfinite: the loss or gradient norm was NaN/inf.
        spike: the loss was a spike (``spike_factor`` × the running mean or more).
        message: a one-line description of anything unusual (empty when all is well).
    """

    action: str = "step"
    nonfinite: bool = False
    spike: bool = False
    message: str = ""


@dataclass
class HealthMonitor:
    """Running loss statistics and the NaN/inf policy.

    Args:
        policy: ``"skip"`` or ``"stop"`` (``train.nonfinite``).
        max_nonfinite: consecutive non-finite steps a ``"skip"`` run tolerates.
        spike_factor: loss / running mean at or above which a step is a spike (0: off).
        warmup: finite steps seen before spikes are judged.
        decay: weight of the past in the running mean (exponential moving average).
    """

    policy: str = "skip"
    max_nonfinite: int = 5
    spike_factor: float = 2.0
    warmup: int = 10
    decay: float = 0.9
    mean: float = 0.0
    seen: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0
    spikes: int = 0

    def check(self, step: int, loss: float, grad_norm: float) -> Verdict:
        """Judge optimizer step ``step`` (1-based) from its global loss and gradient norm."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.nonfinite_total += 1
            self.nonfinite_run += 1
            what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
            stop = self.policy == "stop" or self.nonfinite_run >= self.max_nonfinite
            if self.policy == "stop":
                why = "train.nonfinite=stop"
            else:
                why = f"{self.nonfinite_run} non-finite steps in a row, train.max_nonfinite={self.max_nonfinite}"
            msg = f"step {step}: {what} is not finite; " + (f"stopping ({why})" if stop else
                                                              f"update skipped ({self.nonfinite_total} so far)")
            return Verdict(action="stop" if stop else "skip", nonfinite=True, message=msg)
        self.nonfinite_run = 0
        spike = (self.spike_factor > 0 and self.seen >= self.warmup and loss >= self.spike_factor * self.mean)
        if spike:
            self.spikes += 1
            return Verdict(spike=True, message=f"step {step}: loss spike {loss:.4f}, "
                                               f"{loss / self.mean:.1f}x the running mean {self.mean:.4f}")
        self.mean = loss if self.seen == 0 else self.decay * self.mean + (1 - self.decay) * loss
        self.seen += 1
        return Verdict()

    def state_dict(self) -> dict[str, float]:
        """Counters and running mean, for checkpoints."""
        return {k: v for k, v in asdict(self).items() if k in ("mean", "seen", "nonfinite_total", "spikes")}

    def load_state_dict(self, state: dict[str, float] | None) -> None:
        """Restore :meth:`state_dict` (``None``: keep the fresh state)."""
        for k, v in (state or {}).items():
            setattr(self, k, type(getattr(self, k))(v))
