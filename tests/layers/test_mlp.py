"""MLP kinds: shapes, the hand-written formulas, and errors."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.layers import MLP, GatedMLP, build_mlp


@pytest.mark.parametrize("kind, cls", [("gelu", MLP), ("gelu_exact", MLP), ("relu", MLP),
                                       ("swiglu", GatedMLP), ("geglu", GatedMLP)])
def test_every_kind_keeps_the_shape(kind, cls):
    mlp = build_mlp(kind, 8, 20, bias=False, dropout=0.0)
    assert isinstance(mlp, cls)
    assert mlp(torch.randn(2, 3, 8)).shape == (2, 3, 8)
    assert mlp.up_proj.weight.shape == (20, 8) and mlp.down_proj.weight.shape == (8, 20)


def test_relu_by_hand():
    mlp = build_mlp("relu", 2, 3, bias=True, dropout=0.0)
    with torch.no_grad():
        mlp.up_proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        mlp.up_proj.bias.copy_(torch.tensor([0.0, -1.0, 0.5]))
        mlp.down_proj.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]]))
        mlp.down_proj.bias.zero_()
    x = torch.tensor([[2.0, -3.0]])
    # up: [2, -4, -0.5] → relu: [2, 0, 0] → down: [2, 4]
    torch.testing.assert_close(mlp(x), torch.tensor([[2.0, 4.0]]))


def test_geglu_is_tanh_gelu_gate_times_up():
    torch.manual_seed(0)
    mlp = build_mlp("geglu", 6, 10, bias=False, dropout=0.0)
    x = torch.randn(4, 6)
    expected = mlp.down_proj(F.gelu(mlp.gate_proj(x), approximate="tanh") * mlp.up_proj(x))
    torch.testing.assert_close(mlp(x), expected)
    # the tanh approximation, not the exact GELU, and not SwiGLU's SiLU
    assert (mlp(x) - mlp.down_proj(F.gelu(mlp.gate_proj(x)) * mlp.up_proj(x))).abs().max() > 0
    assert (mlp(x) - mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))).abs().max() > 1e-3


def test_dropout_acts_only_in_training():
    mlp = build_mlp("relu", 8, 16, bias=True, dropout=0.5)
    x = torch.randn(64, 8)
    assert torch.equal(mlp.eval()(x), mlp(x))
    assert not torch.equal(mlp.train()(x), mlp.eval()(x))


def test_unknown_kind_and_activation():
    with pytest.raises(ValueError, match="unknown mlp 'tanh'"):
        build_mlp("tanh", 4, 8, bias=True, dropout=0.0)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(4, 8, activation="swish")
