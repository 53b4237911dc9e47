"""Every backend × mask × position scheme × GQA combination against one float64 reference.

The reference builds each mask's allowed (Tq, Tk) pattern from its definition (``RULES``),
sharing no code with attnlab.attention.masks, so a wrong mask predicate fails here too.

Flex runs a representative subset in test_flex.py (each new mask/score function costs a
compile on CPU, where Flex is also forward-only); here the eager, SDPA and chunked
backends run the whole matrix, forward and gradients, and SDPA must refuse the
non-additive soft-cap with its documented error.
"""

import zlib

import pytest
import torch

from attnlab.attention import attention, masks
from attnlab.attention.positions import ALiBiPositions, RelativePositionBias
from attnlab.attention.score_mods import softcap

H = 4
DOCS = [[0] * 5 + [1] * 7, [0] * 9 + [1] * 3]  # (B, Tk) document id of every key position
MASKS = {
    "causal": lambda: masks.causal(),
    "window": lambda: masks.sliding_window(5),
    "local_global": lambda: masks.local_global(4, 2, causal=True),
    "document": lambda: masks.document(torch.tensor(DOCS)) & masks.causal(),
    "prefix_lm": lambda: masks.prefix_lm(4),
}

# The same masks written from their definitions, with no mask code from attnlab: may query
# position q of batch row b see key position kv?
RULES = {
    "causal": lambda b, q, kv: kv <= q,
    "window": lambda b, q, kv: kv <= q and q - kv < 5,  # the query and the 4 keys before it
    "local_global": lambda b, q, kv: kv <= q and (q - kv < 4 or q < 2 or kv < 2),  # first 2 tokens global
    "document": lambda b, q, kv: kv <= q and DOCS[b][q] == DOCS[b][kv],
    "prefix_lm": lambda b, q, kv: kv <= q or kv < 4,  # bidirectional over the 4-token prefix
}


def allowed_pattern(rule, batch, tq, tk):
    """(B, 1, Tq, Tk) bool from a rule; the Tq queries sit at positions Tk - Tq .. Tk - 1."""
    rows = [[[rule(b, tk - tq + i, kv) for kv in range(tk)] for i in range(tq)] for b in range(batch)]
    allowed = torch.tensor(rows, dtype=torch.bool).unsqueeze(1)
    assert allowed.any(-1).all(), "every query must see at least one key"
    return allowed


def case_seed(*parts) -> int:
    """A seed fixed across runs and processes (``hash()`` of a string is not)."""
    return zlib.crc32("-".join(map(str, parts)).encode()) % 1000


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
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_masks_match_rules(mask_name, shape):
    """Each mask's dense pattern is the one its rule states (the matrix below relies on the rules)."""
    tq, tk = shape
    got = MASKS[mask_name]().dense(2, H, tq, tk, "cpu")  # (B or 1, H or 1, Tq, Tk)
    want = allowed_pattern(RULES[mask_name], 2, tq, tk)
    assert torch.equal(got.expand(2, H, tq, tk), want.expand(2, H, tq, tk))


@pytest.mark.parametrize("shape", [(12, 12), (3, 12)], ids=["square", "decode"])
@pytest.mark.parametrize("hkv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("pos", ["none", "alibi", "relative", "softcap"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("backend", ["eager", "sdpa", "chunked", "auto"])
def test_matrix_matches_float64_reference(backend, mask_name, pos, hkv, shape):
    tq, tk = shape
    torch.manual_seed(case_seed(mask_name, pos, hkv, tq))
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
    ref = reference(q, k, v, allowed_pattern(RULES[mask_name], 2, tq, tk), transform)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "chunked"])
def test_matrix_bf16_loose(backend):
    """bf16 inputs: within 2e-2 of the float64 reference (relative to its scale)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, H, 16, 32) for _ in range(3))
    mask = masks.sliding_window(6)
    mod, transform = position("alibi")
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask=mask, score_mod=mod, backend=backend)
    window = allowed_pattern(lambda b, q, kv: kv <= q and q - kv < 6, 2, 16, 16)
    ref = reference(q.double(), k.double(), v.double(), window, transform)
    err = (out.double() - ref).norm() / ref.norm()
    assert out.dtype == torch.bfloat16 and err < 2e-2, err
