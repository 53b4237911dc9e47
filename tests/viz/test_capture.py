"""capture_attention: right weights, only the selected layers go eager, everything restored."""

import math

import pytest
import torch

from attnlab import config
from attnlab.attention import dispatch_log
from attnlab.models import build
from attnlab.viz import attention_layers, capture_attention


def tiny_model(backend: str = "sdpa", dtype=torch.float64, n_layer: int = 3):
    torch.manual_seed(0)
    cfg = config.load("gpt-tiny", [
        "model.vocab_size=61", "model.block_size=24", f"model.n_layer={n_layer}", "model.n_head=4",
        "model.d_model=32", f"model.attention.backend={backend}",
    ])
    return build(cfg).to(dtype).eval()


def reference_weights(attn, x: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q kᵀ / sqrt(d)) from the layer's projection weights, in float64."""
    x = x.double()
    b, t, _ = x.shape
    d = attn.head_dim

    def proj(lin):
        y = x @ lin.weight.double().T + (lin.bias.double() if lin.bias is not None else 0)
        return y.view(b, t, -1, d).transpose(1, 2)  # (B, H, T, D)

    q, k = proj(attn.q_proj), proj(attn.k_proj)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)  # (B, H, T, T)


def test_weights_match_independent_reference():
    model = tiny_model()
    mods = attention_layers(model)
    inputs = {}
    hook = mods[1].register_forward_pre_hook(lambda m, args: inputs.__setitem__("x", args[0]))
    ids = torch.randint(0, 61, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture_attention(model, layers=[1], heads=[3, 0]) as cap:
        model(ids)
    hook.remove()
    ref = reference_weights(mods[1], inputs["x"])  # (2, 4, 11, 11)
    assert set(cap.weights) == {1}
    assert cap.weights[1].shape == (2, 2, 11, 11)
    torch.testing.assert_close(cap.weights[1], ref[:, [3, 0]], atol=1e-12, rtol=1e-10)


def test_only_selected_layers_run_eager_and_outputs_unchanged():
    model = tiny_model(backend="sdpa")
    ids = torch.randint(0, 61, (1, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(ids)
        dispatch_log(clear=True)
        with capture_attention(model, layers=[2]) as cap:
            captured = model(ids)
    log = dispatch_log(clear=True)
    counts = {r["backend"]: r["count"] for r in log if r["q_shape"] == (1, 4, 17, 8)}
    assert counts == {"eager": 1, "sdpa": 2}, log  # layer 2 eager, layers 0 and 1 keep the fused kernel
    assert cap.weights[2].shape == (1, 4, 17, 17)
    torch.testing.assert_close(captured, plain, atol=1e-10, rtol=0)
    # Restored: sdpa again, no hook (sdpa would refuse to return weights).
    assert [m.backend for m in attention_layers(model)] == ["sdpa"] * 3
    assert all(m.capture is None for m in attention_layers(model))


def test_float32_outputs_match_within_rounding():
    model = tiny_model(backend="auto", dtype=torch.float32)
    ids = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = model(ids)
        with capture_attention(model) as cap:
            captured = model(ids)
    assert sorted(cap.weights) == [0, 1, 2]
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=1e-5)
    for w in cap.weights.values():  # each row a distribution over the allowed (past) keys
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 20))
        assert torch.all(w.triu(1) == 0)


def test_restored_after_exception_and_history():
    model = tiny_model(backend="auto")
    ids = torch.randint(0, 61, (1, 5))
    with pytest.raises(RuntimeError, match="boom"):
        with torch.no_grad(), capture_attention(model, layers=[0], keep_history=True) as cap:
            model(ids)
            model(ids[:, :3])
            raise RuntimeError("boom")
    assert [len(cap.history[0]), cap.weights[0].shape[-1]] == [2, 3]
    assert [m.backend for m in attention_layers(model)] == ["auto"] * 3
    assert all(m.capture is None for m in attention_layers(model))


def test_nested_captures_both_collect():
    model = tiny_model(n_layer=2)
    ids = torch.randint(0, 61, (1, 6))
    with torch.no_grad(), capture_attention(model, heads=[1]) as outer:
        with capture_attention(model, layers=[1]) as inner:
            model(ids)
        assert attention_layers(model)[1].backend == "eager"  # the outer capture still holds it
    torch.testing.assert_close(outer.weights[1], inner.weights[1][:, [1]])
    assert [m.backend for m in attention_layers(model)] == ["sdpa", "sdpa"]


@pytest.mark.parametrize("kwargs, message", [
    ({"layers": [3]}, "layer 3 is out of range: this model has 3 layers, valid layers are 0..2"),
    ({"layers": [-1]}, "valid layers are 0..2"),
    ({"heads": [0, 4]}, "head 4 is out of range: this model has 4 heads, valid heads are 0..3"),
    ({"layers": []}, "no layers selected"),
    ({"heads": [1, 1]}, "duplicate"),
])
def test_bad_selection_names_the_valid_range(kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        with capture_attention(model, **kwargs):
            pass
    assert all(m.capture is None and m.backend == "sdpa" for m in attention_layers(model))
