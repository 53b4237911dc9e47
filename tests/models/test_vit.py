"""Vision Transformer: exact patching, shapes, attention over patches, positions, training, errors."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.config import ModelConfig
from attnlab.errors import ConfigError
from attnlab.models.vit import PatchEmbedding, VisionTransformer, class_token_attention

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: extra threads only add contention


def tiny(**kw) -> ModelConfig:
    base = dict(arch="encoder", vocab_size=0, block_size=17, n_layer=2, n_head=2, d_model=32, d_ff=64,
                norm_placement="pre", mlp="gelu_exact", position="learned")
    base.update(kw)
    return ModelConfig(**base)


def vit(cfg=None, **kw) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(image_size=8, patch_size=2, channels=1, n_classes=3)
    args.update(kw)
    return VisionTransformer(cfg or tiny(), **args)


def test_shapes_and_weights():
    model = vit().eval()
    x = torch.rand(5, 1, 8, 8)
    assert model(x).shape == (5, 3)
    logits, weights = model(x, return_weights=True)
    torch.testing.assert_close(logits, model(x))  # the weight-returning path computes the same thing
    assert len(weights) == 2
    for w in weights:
        assert w.shape == (5, 2, 17, 17)  # (B, heads, 1+P, 1+P)
        torch.testing.assert_close(w.sum(-1), torch.ones(5, 2, 17))
        assert (w >= 0).all()
    maps = class_token_attention(weights, model.grid)
    assert maps.shape == (2, 5, 2, 4, 4)
    torch.testing.assert_close(maps[1, 3, 0], weights[1][3, 0, 0, 1:].view(4, 4))


def test_patches_are_exact_and_match_a_strided_conv():
    pe = PatchEmbedding((4, 6), patch_size=2, channels=2, d_model=8)
    img = torch.arange(2 * 4 * 6, dtype=torch.float32).view(1, 2, 4, 6)
    patches = pe.patches(img)
    assert pe.grid == (2, 3) and patches.shape == (1, 6, 8)
    # patch (row 1, col 2) = pixels rows 2..3, cols 4..5 of channel 0, then of channel 1
    expected = torch.tensor([[16, 17, 22, 23], [40, 41, 46, 47]], dtype=torch.float32).flatten()
    torch.testing.assert_close(patches[0, 1 * 3 + 2], expected)
    for k in range(6):  # every patch, row-major
        r, c = divmod(k, 3)
        torch.testing.assert_close(patches[0, k], img[0, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].flatten())
    x = torch.randn(3, 2, 4, 6)
    conv = F.conv2d(x, pe.proj.weight.view(8, 2, 2, 2), pe.proj.bias, stride=2)  # (B, D, 2, 3)
    torch.testing.assert_close(pe(x), conv.flatten(2).transpose(1, 2))


def test_class_token_sees_every_patch():
    model = vit().eval()
    x = torch.rand(1, 1, 8, 8)
    base = model.encode(x)[:, 0]  # (1, D): the class token
    for r, c in [(0, 0), (3, 3), (1, 2)]:
        y = x.clone()
        y[0, 0, 2 * r, 2 * c] += 1.0  # one pixel of one patch
        assert (model.encode(y)[:, 0] - base).abs().max() > 1e-4
    torch.testing.assert_close(model.encode(x.clone())[:, 0], base)


def _shuffle_patches(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Move 2×2 patches of an 8×8 image around the 4×4 grid."""
    p = x.view(x.shape[0], 1, 4, 2, 4, 2).permute(0, 1, 2, 4, 3, 5).reshape(x.shape[0], 1, 16, 2, 2)
    p = p[:, :, perm].view(x.shape[0], 1, 4, 4, 2, 2).permute(0, 1, 2, 4, 3, 5)
    return p.reshape(x.shape)


def test_without_positions_the_patch_order_does_not_matter():
    """No positions: attention is permutation-equivariant, the class token sees a bag of patches."""
    x = torch.rand(2, 1, 8, 8)
    y = _shuffle_patches(x, torch.randperm(16, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(x, y)
    for position, same in (("none", True), ("learned", False)):
        model = vit(tiny(position=position)).eval()
        with torch.no_grad():  # weights large enough for sharp, content-dependent attention
            for p in model.parameters():
                p.normal_(0.0, 0.5)
        cx, cy = model.encode(x)[:, 0], model.encode(y)[:, 0]  # (B, D): the class token
        if same:
            torch.testing.assert_close(cy, cx, atol=1e-5, rtol=1e-5)
        else:
            assert (cy - cx).abs().max() > 1e-2


@pytest.mark.parametrize("position", ["sinusoidal", "rope", "alibi", "relative"])
def test_other_position_schemes_run(position):
    logits, weights = vit(tiny(position=position))(torch.rand(2, 1, 8, 8), return_weights=True)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, 2, 17))


def test_post_norm_and_rgb_images():
    model = vit(tiny(norm_placement="post", block_size=7), image_size=(6, 9), patch_size=3, channels=3).eval()
    assert model.grid == (2, 3) and model(torch.rand(2, 3, 6, 9)).shape == (2, 3)


def test_learns_a_tiny_synthetic_task():
    """Class = which of 4 random binary templates an image is (plus noise); the loss falls, the set is learned."""
    g = torch.Generator().manual_seed(0)
    templates = (torch.rand(4, 1, 8, 8, generator=g) > 0.6).float()
    labels = torch.randint(0, 4, (64,), generator=g)
    x = templates[labels] + 0.3 * torch.randn(64, 1, 8, 8, generator=g)  # (64, 1, 8, 8)
    model = vit(n_classes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (model.eval()(x).argmax(-1) == labels).float().mean() > 0.9


def test_bad_sizes_are_clear_errors():
    model = vit()
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 8, 8\).*got \(2, 1, 7, 8\)"):
        model(torch.rand(2, 1, 7, 8))
    with pytest.raises(ValueError, match="got \\(8, 8\\)"):
        model(torch.rand(8, 8))
    with pytest.raises(ConfigError, match="patch_size=3 does not divide the image size 8×8"):
        vit(patch_size=3)
    with pytest.raises(ConfigError, match="set model.block_size=65"):
        vit(patch_size=1)
    with pytest.raises(ConfigError, match="model.arch=encoder"):
        vit(tiny(arch="decoder"))
    with pytest.raises(ValueError, match="4×4 grid"):
        class_token_attention([torch.rand(1, 2, 10, 10)], (4, 4))
