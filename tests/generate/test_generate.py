import pytest
import torch

from attnlab.config import AttentionConfig, ModelConfig
from attnlab.generate import filter_logits, generate, stream
from attnlab.models import build

VARIANTS = [
    dict(position="learned"),
    dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2),
    dict(position="sinusoidal", n_kv_head=1),
    dict(position="alibi", attention=AttentionConfig(window=6)),
    dict(position="relative", attention=AttentionConfig(window=5, global_tokens=2, softcap=3.0)),
    dict(position="rope", mixer="linear", n_kv_head=2),
]


def model_for(**kw):
    torch.manual_seed(0)
    return build(ModelConfig(vocab_size=61, block_size=48, n_layer=2, n_head=4, d_model=32, **kw)).eval()


@pytest.mark.parametrize("kw", VARIANTS)
def test_cached_logits_equal_uncached(kw):
    model = model_for(**kw).double()
    ids = torch.randint(0, 61, (2, 20))
    full = model(ids)  # (B, T, V)
    cache = model.make_cache()
    # A prompt chunk, then one token at a time, then a 2-token chunk.
    parts = [model(ids[:, :7], cache=cache)]
    for t in range(7, 18):
        parts.append(model(ids[:, t : t + 1], cache=cache))
    parts.append(model(ids[:, 18:20], cache=cache))
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kw", VARIANTS)
def test_cached_and_uncached_generation_agree(kw):
    model = model_for(**kw)
    prompt = torch.randint(0, 61, (3, 5))
    greedy_c = generate(model, prompt, 20, temperature=0.0)
    greedy_u = generate(model, prompt, 20, temperature=0.0, use_cache=False)
    assert torch.equal(greedy_c, greedy_u)
    assert greedy_c.shape == (3, 25) and torch.equal(greedy_c[:, :5], prompt)
    sample_c = generate(model, prompt, 20, temperature=1.0, top_k=10, seed=3)
    sample_u = generate(model, prompt, 20, temperature=1.0, top_k=10, seed=3, use_cache=False)
    assert torch.equal(sample_c, sample_u)


def test_greedy_is_argmax_of_full_forward():
    model = model_for()
    prompt = torch.randint(0, 61, (1, 4))
    out = generate(model, prompt, 6, temperature=0.0)
    for t in range(4, 10):
        assert out[0, t] == model(out[:, :t])[0, -1].argmax()


def test_seeded_sampling_reproducible_and_varied():
    model = model_for()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = generate(model, prompt, 30, temperature=1.0, seed=1)
    assert torch.equal(a, generate(model, prompt, 30, temperature=1.0, seed=1))
    assert not torch.equal(a, generate(model, prompt, 30, temperature=1.0, seed=2))


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(k2).tolist() == [[True, True, False, False, False]]
    p = filter_logits(logits, top_p=0.7)  # 0.5 + 0.2 reaches 0.7
    assert torch.isfinite(p).tolist() == [[True, True, False, False, False]]
    p = filter_logits(logits, top_p=0.71)
    assert torch.isfinite(p).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).sum() == 1  # the top token always survives


def test_top_k_one_equals_greedy():
    model = model_for()
    prompt = torch.randint(0, 61, (2, 3))
    assert torch.equal(generate(model, prompt, 10, temperature=1.0, top_k=1, seed=0),
                       generate(model, prompt, 10, temperature=0.0))


def test_eos_stops_rows():
    model = model_for()
    prompt = torch.randint(0, 61, (2, 3))
    free = generate(model, prompt, 10, temperature=0.0)
    eos = int(free[0, 5])  # the token row 0 emits at its third step
    out = generate(model, prompt, 10, temperature=0.0, eos_token_id=eos)
    row0 = out[0, 3:].tolist()
    first = row0.index(eos)
    assert all(t == eos for t in row0[first:])
    steps = list(stream(model, prompt[:1], 10, temperature=0.0, eos_token_id=eos))
    assert len(steps) == first + 1  # a single row stops right after its eos


def test_too_long_rejected():
    model = model_for()
    with pytest.raises(ValueError, match="exceeds the model's context of 48"):
        generate(model, torch.zeros(1, 40, dtype=torch.long), 9)
    with pytest.raises(ValueError, match="exceeds the model's context of 48"):
        generate(model, torch.zeros(1, 40, dtype=torch.long), 9, num_beams=2)
    assert generate(model, torch.zeros(1, 40, dtype=torch.long), 8).shape == (1, 48)


@pytest.mark.parametrize("kw", VARIANTS)
def test_beam_search_cached_equals_uncached(kw):
    model = model_for(**kw).double()
    prompt = torch.randint(0, 61, (2, 4))
    cached = generate(model, prompt, 6, num_beams=3, num_return_sequences=2)
    assert cached.shape == (4, 10) and torch.equal(cached[::2, :4], prompt)
    assert torch.equal(cached, generate(model, prompt, 6, num_beams=3, num_return_sequences=2, use_cache=False))


def test_generation_restores_training_mode():
    model = model_for().train()
    generate(model, torch.zeros(1, 2, dtype=torch.long), 3, num_beams=2)
    steps = stream(model, torch.zeros(1, 2, dtype=torch.long), 3)
    next(steps)
    assert torch.is_grad_enabled()  # no_grad holds only while the generator runs
    list(steps)
    assert model.training and torch.is_grad_enabled()
