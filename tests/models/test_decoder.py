import pytest
import torch
import torch.nn.functional as F

from attnlab import config
from attnlab.attention import dispatch_log
from attnlab.config import AttentionConfig, ModelConfig
from attnlab.models import DecoderLM, build


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, d_model=32)
    base.update(kw)
    return ModelConfig(**base)


VARIANTS = [
    {},
    dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_embeddings=False),
    dict(position="sinusoidal", n_kv_head=1),
    dict(position="none"),
    dict(position="alibi", attention=AttentionConfig(window=5)),
    dict(position="relative", attention=AttentionConfig(window=6, global_tokens=2, softcap=5.0)),
    dict(position="rope", mixer="linear"),
]


@pytest.mark.slow
def test_gpt2_124m_parameter_count():
    model = build(config.load("gpt2-124m"))
    assert model.num_params() == 124_439_808
    assert model.lm_head.weight is model.tok_emb.weight


def test_untied_head_has_own_weights():
    m = build(tiny(tie_embeddings=False))
    assert m.lm_head.weight is not m.tok_emb.weight
    assert m.num_params() == build(tiny()).num_params() + 97 * 32


def test_gpt2_scaled_residual_init():
    torch.manual_seed(0)
    m = build(tiny(n_layer=8, d_model=256, n_head=4, vocab_size=1000, block_size=64))
    o = m.blocks[0].attn.o_proj.weight.std().item()
    q = m.blocks[0].attn.q_proj.weight.std().item()
    assert q == pytest.approx(0.02, rel=0.05)
    assert o == pytest.approx(0.02 / (2 * 8) ** 0.5, rel=0.05)
    assert torch.all(m.blocks[0].attn.q_proj.bias == 0)


@pytest.mark.parametrize("kw", VARIANTS)
def test_forward_shapes_and_causality(kw):
    torch.manual_seed(0)
    m = build(tiny(**kw)).eval()
    x = torch.randint(0, 97, (2, 12))
    logits = m(x)
    assert logits.shape == (2, 12, 97)
    # Changing a future token must not change earlier logits.
    x2 = x.clone()
    x2[:, 8] = (x2[:, 8] + 1) % 97
    torch.testing.assert_close(m(x2)[:, :8], logits[:, :8])
    assert not torch.allclose(m(x2)[:, 8:], logits[:, 8:])


@pytest.mark.parametrize("kw", [v for v in VARIANTS if v.get("mixer") != "linear"])
def test_eager_and_sdpa_models_agree(kw):
    kw = dict(kw)
    a_cfg = kw.pop("attention", AttentionConfig())
    if a_cfg.softcap:  # soft-capping is not additive: SDPA cannot run it
        a_cfg = AttentionConfig(window=a_cfg.window, global_tokens=a_cfg.global_tokens)
    torch.manual_seed(0)
    a = build(tiny(attention=AttentionConfig(**{**vars(a_cfg), "backend": "eager"}), **kw)).double().eval()
    b = build(tiny(attention=AttentionConfig(**{**vars(a_cfg), "backend": "sdpa"}), **kw)).double().eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 97, (3, 20))
    torch.testing.assert_close(a(x), b(x), atol=1e-10, rtol=1e-10)


def test_return_weights_runs_eager_and_matches_logits():
    torch.manual_seed(0)
    m = build(tiny()).eval()
    x = torch.randint(0, 97, (1, 10))
    dispatch_log(clear=True)
    logits, weights = m(x, return_weights=True)
    assert len(weights) == 2 and weights[0].shape == (1, 4, 10, 10)
    assert torch.allclose(weights[0].sum(-1), torch.ones(1, 4, 10))
    assert torch.all(weights[0].triu(1) == 0)  # causal
    assert {r["backend"] for r in dispatch_log()} == {"eager"}
    torch.testing.assert_close(logits, m(x), atol=1e-5, rtol=1e-5)


def test_too_long_input_is_rejected():
    m = build(tiny())
    with pytest.raises(ValueError, match="exceeds the model's context of 32"):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_one_training_step_lowers_loss():
    torch.manual_seed(0)
    m = build(tiny())
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x = torch.randint(0, 97, (4, 16))
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(m(x[:, :-1]).reshape(-1, 97), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_build_accepts_model_section():
    assert isinstance(build(tiny()), DecoderLM)


def test_sliding_window_limits_the_receptive_field():
    torch.manual_seed(0)
    # One layer with window 4: logits at t depend only on tokens t-3..t.
    m = build(tiny(n_layer=1, position="alibi", attention=AttentionConfig(window=4))).eval()
    x = torch.randint(0, 97, (1, 16))
    x2 = x.clone()
    x2[0, 5] = (x2[0, 5] + 1) % 97
    a, b = m(x), m(x2)
    torch.testing.assert_close(a[:, 9:], b[:, 9:])  # position 5 is outside every window from 9 on
    assert not torch.allclose(a[:, 5:9], b[:, 5:9])


def test_window_at_least_context_equals_full_causal():
    torch.manual_seed(0)
    full = build(tiny(position="rope")).eval()
    win = build(tiny(position="rope", attention=AttentionConfig(window=32))).eval()
    win.load_state_dict(full.state_dict())
    x = torch.randint(0, 97, (2, 32))
    torch.testing.assert_close(win(x), full(x))


def test_global_tokens_are_seen_beyond_the_window():
    torch.manual_seed(0)
    m = build(tiny(n_layer=1, attention=AttentionConfig(window=3, global_tokens=1))).eval()
    x = torch.randint(0, 97, (1, 12))
    x2 = x.clone()
    x2[0, 0] = (x2[0, 0] + 1) % 97
    assert not torch.allclose(m(x)[:, 11], m(x2)[:, 11])


def test_rope_scaling_extends_the_context():
    m = build(tiny(position="rope", rope_scaling="linear", rope_scaling_factor=2.0)).eval()
    assert m.max_context == 64
    assert m(torch.zeros(1, 64, dtype=torch.long)).shape == (1, 64, 97)
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        m(torch.zeros(1, 65, dtype=torch.long))


def test_topk_attention_changes_outputs_and_runs_eager():
    torch.manual_seed(0)
    dense = build(tiny()).eval()
    sparse = build(tiny(attention=AttentionConfig(topk=2))).eval()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randint(0, 97, (1, 10))
    dispatch_log(clear=True)
    out = sparse(x)
    assert {r["backend"] for r in dispatch_log()} == {"eager"}
    torch.testing.assert_close(out[:, :2], dense(x)[:, :2])  # rows with <= 2 keys are unchanged
    assert not torch.allclose(out[:, 5:], dense(x)[:, 5:])
