"""Attention heatmaps: a real PNG of the expected grid, readable labels, clear errors."""

import struct
from pathlib import Path

import pytest
import torch

from attnlab import config
from attnlab.models import build
from attnlab.viz import attention_heatmap, plot_attention, token_labels


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) read from the PNG header (independent of matplotlib)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def causal_weights(layers: int, heads: int, t: int) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(layers, 1, heads, t, t, generator=g).masked_fill(torch.ones(t, t).triu(1).bool(),
                                                                          float("-inf"))
    w = torch.softmax(scores, -1)
    return {i: w[i] for i in range(layers)}


class CharTokenizer:
    """One token per character (ids = code point mod 61)."""

    def encode(self, text):
        return [ord(c) % 61 for c in text]

    def token_strings(self, ids):
        return [chr(i + 64) for i in ids]


def tiny_model():
    torch.manual_seed(0)
    cfg = config.load("gpt-tiny", ["model.vocab_size=61", "model.block_size=48", "model.n_layer=2",
                                   "model.n_head=2", "model.d_model=16"])
    return build(cfg).eval()


def test_token_labels_are_readable():
    assert token_labels([" But", "\n", " ", "soft,", "\t x", "a" * 20]) == [
        "But", "\\n", "␣", "soft,", "\\t x", "a" * 11 + "…"]


def test_grid_png_written_and_scales_with_grid(tmp_path):
    tokens = ["RO", "M", "E", "O", ".", " But", " soft", ","]
    small = plot_attention(causal_weights(1, 1, 8), tokens, tmp_path / "one.png")
    big = plot_attention(causal_weights(2, 3, 8), tokens, tmp_path / "sub" / "grid.png", heads=[0, 5, 7], title="t")
    (w1, h1), (w2, h2) = png_size(small), png_size(big)
    assert w2 > 2 * w1 and h2 > 1.5 * h1  # 3 columns vs 1, 2 rows vs 1
    assert big.stat().st_size > 20_000  # real content, not an empty canvas
    import matplotlib.image

    pixels = matplotlib.image.imread(big)
    assert pixels[..., :3].std() > 0.1  # not a blank image


def test_long_inputs_show_the_last_tokens(tmp_path):
    t = 70
    path = plot_attention(causal_weights(1, 2, t), [f"w{i}" for i in range(t)], tmp_path / "long.png", max_tokens=40)
    w, h = png_size(path)
    assert 300 < w < 2000 and 300 < h < 2000  # capped panel size stays on screen


def test_label_count_must_match_keys(tmp_path):
    with pytest.raises(ValueError, match="3 token labels for 8 keys"):
        plot_attention(causal_weights(1, 1, 8), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no weights for layer 5"):
        plot_attention(causal_weights(1, 1, 8), list("abcdefgh"), tmp_path / "x.png", layers=[5])


def test_attention_heatmap_from_model(tmp_path):
    model = tiny_model()
    out = attention_heatmap(model, CharTokenizer(), "But soft, what light", tmp_path / "h.png", layers=[1], heads=[0])
    assert png_size(out)[0] > 200
    assert all(m.capture is None for m in model.modules() if hasattr(m, "capture"))


@pytest.mark.parametrize("text, kwargs, message", [
    ("", {}, "encodes to no tokens"),
    ("x" * 49, {}, "49 tokens but the model's context is 48"),
    ("abc", {"layers": [2]}, "valid layers are 0..1"),
    ("abc", {"heads": [2]}, "valid heads are 0..1"),
])
def test_attention_heatmap_errors(tmp_path, text, kwargs, message):
    with pytest.raises(ValueError, match=message):
        attention_heatmap(tiny_model(), CharTokenizer(), text, tmp_path / "e.png", **kwargs)
    assert not (tmp_path / "e.png").exists()
