"""Inference weights for faster CPU decoding: bf16 weights, or int8 weight-only linears.

:func:`prepare_weights` converts a loaded model in place, once, and returns a
:class:`WeightsReport` whose :meth:`~WeightsReport.line` says which dtype, quantization and
kernel run (the CLI prints it on stderr):

- ``dtype=float32``: the weights as trained.
- ``dtype=bfloat16``: every floating-point weight and buffer in bf16; matmuls run on oneDNN.
- ``quantize=int8``: every ``nn.Linear`` whose input width is a multiple of 16 becomes an
  :class:`Int8Linear` (symmetric int8 weights, one scale per output channel, quantized from the
  fp32 weights), run by PyTorch's ``torch._weight_int8pack_mm`` with bf16 activations; the rest
  of the model (embeddings, norms, biases, linears the kernel cannot take) is bf16. Measured on
  this CPU, the kernel with fp32 activations is 4–10× slower than with bf16, so int8 computes in
  bf16 and ``dtype=float32`` with int8 is refused. The LM head is quantized too; when it is tied
  to the token embedding, the embedding keeps its own bf16 table (a lookup, not a matmul) and the
  head gets an int8 copy, so the two are no longer one tensor (inference only).

torchao 0.18's int8 weight-only tensor was checked and not used: in eager mode it converts the
whole int8 weight to the activation dtype on every call (it relies on torch.compile to fuse that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnlab.errors import AttnlabError
from attnlab.precision import Precision, resolve_precision

QUANTIZE = ("none", "int8")
INT8_KERNEL = "torch._weight_int8pack_mm"
INT8_K_MULTIPLE = 16
"""``torch._weight_int8pack_mm`` on CPU needs the input width to be a multiple of 16 (else wrong results)."""


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization of a (N, K) weight: ``weight ≈ q * scales[:, None]``.

    Returns:
        (N, K) int8 values in [-127, 127] and (N,) fp32 scales (max |row| / 127).
    """
    w = weight.detach().float()  # (N, K)
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (N,)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
    return q, scales


class Int8Linear(nn.Module):
    """``y = x @ (q * scales[:, None]).T + bias``: an ``nn.Linear`` with int8 weights, one scale per output.

    Inference only (buffers, no gradients). Runs ``torch._weight_int8pack_mm`` in the dtype of
    ``scales`` (bf16 after :func:`prepare_weights`); the input is cast to it.

    Args:
        q: (out_features, in_features) int8 weights; ``in_features`` a multiple of 16.
        scales: (out_features,) per-output-channel scales.
        bias: (out_features,) or None.
    """

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if q.dtype != torch.int8 or q.dim() != 2 or q.shape[1] % INT8_K_MULTIPLE:
            raise ValueError(f"Int8Linear needs a 2-D int8 weight with in_features a multiple of {INT8_K_MULTIPLE}, "
                             f"got {q.dtype} {tuple(q.shape)}")
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight_int8", q.contiguous())
        self.register_buffer("scales", scales.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """The int8 form of ``linear`` (quantized from its weights as they are, fp32 preferred)."""
        q, scales = quantize_rows(linear.weight)
        return cls(q, scales.to(linear.weight.dtype), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)  # (M, K)
        y = torch._weight_int8pack_mm(x2, self.weight_int8, self.scales)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`prepare_weights` did: the compute precision, the quantization and where it applied."""

    precision: Precision
    quantize: str = "none"
    int8_linears: int = 0
    kept_linears: tuple[str, ...] = ()
    """Linears left in bf16 because the int8 kernel cannot take them (input width not a multiple of 16)."""
    tied_head: bool = False

    @property
    def kernel(self) -> str:
        if self.quantize == "int8":
            return INT8_KERNEL
        return "F.linear (oneDNN bf16)" if self.precision.dtype == torch.bfloat16 else "F.linear (fp32)"

    def line(self) -> str:
        """One line naming the weights, the kernel and why this dtype."""
        why = self.precision.reason.replace(" autocast", "")  # weights are cast, not autocast
        if self.quantize != "int8":
            return f"weights: {self.precision.name}, kernel {self.kernel}; dtype {why}"
        head = "LM head included" + (" (tied: the embedding keeps a bf16 table)" if self.tied_head else "")
        kept = ""
        if self.kept_linears:
            kept = (f", {len(self.kept_linears)} kept in bf16 (in_features not a multiple of {INT8_K_MULTIPLE}: "
                    f"{', '.join(self.kept_linears[:3])}{', ...' if len(self.kept_linears) > 3 else ''})")
        return (f"weights: int8 weight-only, per-output-channel scales, {self.int8_linears} linears ({head}){kept}; "
                f"kernel {self.kernel}, activations bfloat16; dtype {why}")


def resolve_inference_precision(dtype: str, quantize: str, device: torch.device) -> Precision:
    """The compute precision for ``dtype`` and ``quantize`` on ``device``.

    Raises:
        AttnlabError: an unknown setting, int8 off the CPU, or int8 with ``dtype=float32``.
    """
    if quantize not in QUANTIZE:
        raise AttnlabError(f"unknown --quantize '{quantize}'; use one of {', '.join(QUANTIZE)}")
    precision = resolve_precision(dtype, device)
    if quantize == "none":
        return precision
    if device.type != "cpu":
        raise AttnlabError(f"--quantize int8 runs on the CPU ({INT8_KERNEL}); pass --device cpu or drop --quantize")
    if dtype == "float32":
        raise AttnlabError("--quantize int8 computes in bfloat16 (the int8 kernel is 4-10x slower on fp32 "
                           "activations); use --dtype bfloat16 or auto, or drop --quantize")
    if precision.dtype != torch.bfloat16:  # auto on a CPU without native bf16
        return Precision(torch.bfloat16, f"bfloat16 (int8 weights compute in bf16; {precision.reason})")
    return precision


def _tied_to_embedding(model: nn.Module, linear: nn.Linear) -> bool:
    return any(m.weight is linear.weight for m in model.modules() if isinstance(m, nn.Embedding))


def prepare_weights(model: nn.Module, device: torch.device, dtype: str = "float32",
                    quantize: str = "none") -> WeightsReport:
    """Convert ``model``'s weights in place for inference: ``dtype`` (auto/float32/bfloat16) and ``quantize``.

    Raises:
        AttnlabError: an unknown or unsupported combination (see :func:`resolve_inference_precision`).
    """
    precision = resolve_inference_precision(dtype, quantize, device)
    if quantize == "none":
        if precision.dtype != torch.float32:
            model.to(precision.dtype)
        return WeightsReport(precision)
    int8, kept, tied = 0, [], False
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in targets:  # quantize from the weights as loaded (fp32), before the bf16 cast
        if linear.in_features % INT8_K_MULTIPLE:
            kept.append(name)
            continue
        tied = tied or _tied_to_embedding(model, linear)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, Int8Linear.from_linear(linear))
        int8 += 1
    model.to(precision.dtype)  # embeddings, norms, kept linears, scales and biases; int8 buffers stay int8
    return WeightsReport(precision, quantize, int8, tuple(kept), tied)


__all__ = ["INT8_KERNEL", "QUANTIZE", "Int8Linear", "WeightsReport", "prepare_weights", "quantize_rows",
           "resolve_inference_precision"]
