"""Looking inside models: attention capture, heatmaps and the attention explorer's computation.

    with capture_attention(model, layers=[0], heads=[0, 2]) as cap:
        model(input_ids)
    plot_attention(cap.weights, tokens, "attention.png", heads=cap.heads)

    attention_heatmap(model, tokenizer, "But soft, what light", "attention.png")

The attention explorer (``attnlab viz serve CKPT``) is a web page over a checkpoint; its
routes are on the server's app (``attnlab.serve.pages``), the computation is here::

    Explorer(model, tokenizer).analyze("But soft")   # tokens, weights[layer][head][q][k], next tokens
"""

from attnlab.viz.capture import AttentionCapture, attention_layers, capture_attention, check_indices
from attnlab.viz.explorer import Explorer, ExplorerConfig, ExplorerInputError
from attnlab.viz.heatmap import attention_heatmap, plot_attention, token_labels

__all__ = [
    "AttentionCapture", "Explorer", "ExplorerConfig", "ExplorerInputError", "attention_heatmap", "attention_layers",
    "capture_attention", "check_indices", "plot_attention", "token_labels",
]
