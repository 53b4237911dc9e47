"""Every backend × mask × position scheme × GQA combination against one float64 reference.

Flex runs a representative subset in test_flex.py (each new mask/score function costs a
compile on CPU, where Flex is also forward-only); here the eager, SDPA and chunked
backends run the whole matrix, forward and gradients, and SDPA must refuse the
non-additive soft-cap with its documented error.
"""

import pytest
import torch

from attnlab.attention import attention, masks
from attnlab.attention.positions import ALiBiPositions, RelativePositionBias
from attnlab.attention.score_mods import softcap

H = 4
MASKS = {
    "causal": lambda: masks.causal(),
    "window": lambda: masks.sliding_window(5),
    "local_global": lambda: masks.local_global(4, 2, causal=True),
    "document": lambda: masks.document(torch.tensor([[0] * 5 + [1] * 7, [0] * 9 + [1] * 3])) & masks.causal(),
    "prefix_lm": lambda: masks.prefix_lm(4),
}


def alibi_bias(tq, tk):
    slopes = torch.tensor([2.0 ** (-8 * (i + 1) / H) for i in range(H)], dtype=torch.float64)
    q = torch.arange(tk - tq, tk).view(tq, 1)
    k = torch.arange(tk).view(1, tk)
    return -(slopes.view(H, 1, 1) * (q - k))  # (H, Tq, Tk)


def position(name):
    """(score_mod, reference transform of float64 scores (B, H, Tq, Tk))."""
    if name == "none":
        return None, lambda s: s
    if name == "alibi":
        return ALiBiPositions(64, H).score_mod(), lambda s: s + alibi_bias(s.shape[-2], s.shape[-1])
    if name == "relative":
        torch.manual_seed(7)
        rel = RelativePositionBias(H, num_buckets=8, max_distance=16, bidirectional=False).double()
        mod = rel.score_mod()

        def ref(s):
            tq, tk = s.shape[-2:]
            qpos = torch.arange(tk - tq, tk).view(tq, 1)
            buckets = rel.bucket(qpos, torch.arange(tk).view(1, tk))  # (Tq, Tk), tested against T5 tables
            table = rel.relative_attention_bias.weight.detach().double()  # (buckets, H)
            return s + table[buckets].permute(2, 0, 1)

        return mod, ref
    if name == "softcap":
        return softcap(2.0), lambda s: 2.0 * torch.tanh(s / 2.0)
    raise KeyError(name)


def reference(q, k, v, allowed, transform):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = transform(torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5)
    s = s.masked_fill(~allowed, float("-inf"))
    w = torch.softmax(s, -1).nan_to_num(0.0)  # every row here has an allowed key
    return w @ v


@pytest.mark.parametrize("shape", [(12, 12), (3, 12)], ids=["square", "decode"])
@pytest.mark.parametrize("hkv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("pos", ["none", "alibi", "relative", "softcap"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("backend", ["eager", "sdpa", "chunked", "auto"])
def test_matrix_matches_float64_reference(backend, mask_name, pos, hkv, shape):
    tq, tk = shape
    torch.manual_seed(hash((mask_name, pos, hkv, tq)) % 1000)
    q = torch.randn(2, H, tq, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, hkv, tk, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, hkv, tk, 8, dtype=torch.float64, requires_grad=True)
    mask = MASKS[mask_name]()
    score_mod, transform = position(pos)
    if backend == "sdpa" and pos == "softcap":
        with pytest.raises(ValueError, match="not additive"):
            attention(q, k, v, mask=mask, score_mod=score_mod, backend="sdpa")
        return
    out = attention(q, k, v, mask=mask, score_mod=score_mod, backend=backend)
    allowed = mask.dense(2, H, tq, tk, "cpu")
    ref = reference(q, k, v, allowed, transform)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "chunked"])
def test_matrix_bf16_loose(backend):
    """bf16 inputs: within 2e-2 of the float64 reference (relative to its scale)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, H, 16, 32) for _ in range(3))
    mask = masks.sliding_window(6)
    mod, transform = position("alibi")
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask=mask, score_mod=mod, backend=backend)
    ref = reference(q.double(), k.double(), v.double(), mask.dense(2, H, 16, 16, "cpu"), transform)
    err = (out.double() - ref).norm() / ref.norm()
    assert out.dtype == torch.bfloat16 and err < 2e-2, err
