"""Weights on disk: read them safely, load them strictly.

:func:`read_weights_file` reads safetensors (the default everywhere) or, for older files,
a PyTorch pickle with ``torch.load(weights_only=True)``, which refuses anything but tensors
and plain containers; an unreadable file is one :class:`CheckpointError` line, never a
traceback. :func:`load_weights` copies weights into a model only after every name and
shape checks out; :func:`weights_state_dict` is what a save writes (tied tensors once).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from attnlab.errors import CheckpointError

__all__ = ["load_weights", "read_weights_file", "weights_state_dict"]

_FIX = "use the config saved with the checkpoint"


def weights_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors with tied (aliased) parameters kept once, contiguous, on CPU."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        ptr = t.data_ptr()
        if ptr in seen and t.numel() > 0:
            continue
        seen.add(ptr)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def load_weights(
    model: nn.Module, weights: dict[str, torch.Tensor], source: str = "checkpoint", fix: str = _FIX
) -> None:
    """Copy ``weights`` into ``model``, checking names and shapes first.

    A tied (aliased) tensor may be given once, under the name :func:`weights_state_dict` keeps.

    Args:
        model: the model to fill.
        weights: tensors by state-dict name.
        source: how messages name where the weights come from (``"checkpoint 'runs/x'"``).
        fix: what the message tells the user to do.

    Raises:
        CheckpointError: a missing, unexpected or misshapen tensor (the model is left untouched).
    """
    expected = model.state_dict()
    tied = set(expected) - set(weights_state_dict(model))
    missing = [k for k in expected if k not in weights and k not in tied]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise CheckpointError(
            f"{source} does not match this model's architecture ({what}, {len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors); {fix}"
        )
    for k, t in weights.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{source} does not match this model's architecture: '{k}' has shape {tuple(t.shape)}, "
                f"the model expects {tuple(expected[k].shape)}; {fix}"
            )
    model.load_state_dict(weights, strict=False)


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a PyTorch pickle (``.bin``, ``.pt``) loaded safely.

    Raises:
        CheckpointError: the file is unreadable, corrupt, or holds anything but a map of names to tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError("reading safetensors weights needs the 'safetensors' package: "
                                  "pip install safetensors") from None
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"'{path}' cannot be read ({_first_line(e)}); the file is corrupt") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - random bytes, a truncated zip or a refused pickle all mean: not weights
        raise CheckpointError(f"'{path}' cannot be read as PyTorch weights ({_torch_load_problem(e)}); "
                              "use the model's safetensors or re-save its state_dict") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"'{path}' does not hold a map of weight names to tensors; is it a model's weights?")
    return state


def _torch_load_problem(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words (its own message is a page)."""
    text = str(e)
    refused = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)  # a blocked module, or not allowed
    if refused:
        return f"it holds more than plain tensors: {refused.group(1)} is refused"
    if "Weights only load failed" in text or isinstance(e, pickle.UnpicklingError) or "zip archive" in text:
        return "it is not a pickle of tensors: damaged, or not a weights file"
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
