"""MultiHeadAttention with the classic score functions (dot, Luong general, Bahdanau additive)."""

import pytest
import torch

from attnlab.attention import MultiHeadAttention, causal


def manual(mha, x, score_fn):
    b, t, _ = x.shape
    h, d = mha.n_head, mha.head_dim
    q = mha.q_proj(x).view(b, t, h, d).transpose(1, 2)
    k = mha.k_proj(x).view(b, t, mha.n_kv_head, d).transpose(1, 2).repeat_interleave(h // mha.n_kv_head, 1)
    v = mha.v_proj(x).view(b, t, mha.n_kv_head, d).transpose(1, 2).repeat_interleave(h // mha.n_kv_head, 1)
    s = score_fn(q, k)  # (B, H, T, T)
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.softmax(s, -1) @ v
    return mha.o_proj(out.transpose(1, 2).reshape(b, t, h * d))


@pytest.mark.parametrize("backend", ["eager", "sdpa", "chunked"])
@pytest.mark.parametrize("scoring", ["dot", "general", "additive"])
def test_scoring_in_mha_matches_formula(scoring, backend):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, 2, scoring=scoring, backend=backend).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64, requires_grad=True)
    sc = mha.scorer

    def score_fn(q, k):
        if scoring == "dot":
            return q @ k.transpose(-1, -2)
        if scoring == "general":  # qᵀ W k, with W k = sc.W(k)
            return torch.einsum("bhie,ed,bhjd->bhij", q, sc.W.weight, k)
        # Bahdanau: vᵀ tanh(W_q q + W_k k + b)
        hidden = torch.tanh(sc.W_q(q).unsqueeze(-2) + sc.W_k(k).unsqueeze(-3))  # (B, H, Tq, Tk, Dh)
        return (hidden @ sc.v.weight.T).squeeze(-1)

    out = mha(x, mask=causal())
    torch.testing.assert_close(out, manual(mha, x, score_fn), atol=1e-10, rtol=1e-10)
    out.sum().backward()
    if sc is not None:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sc.parameters())


def test_scoring_decode_with_cache_equals_full():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, scoring="additive").double().eval()
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    full = mha(x, mask=causal())
    from attnlab.attention import LayerCache

    cache = LayerCache()
    steps = [mha(x[:, t : t + 1], mask=causal(), cache=cache) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-10)


def test_unknown_scoring():
    with pytest.raises(ValueError, match="unknown scoring 'cosine'"):
        MultiHeadAttention(32, 4, scoring="cosine")
