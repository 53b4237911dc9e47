"""Looking inside models: attention capture and heatmaps.

    with capture_attention(model, layers=[0], heads=[0, 2]) as cap:
        model(input_ids)
    plot_attention(cap.weights, tokens, "attention.png", heads=cap.heads)

    attention_heatmap(model, tokenizer, "But soft, what light", "attention.png")

The attention explorer (``attnlab viz serve CKPT``) is a web page over a checkpoint::

    server = make_explorer_server(Explorer(model, tokenizer), ExplorerConfig(port=0))
"""

from attnlab.viz.capture import AttentionCapture, attention_layers, capture_attention, check_indices
from attnlab.viz.explorer import Explorer, ExplorerConfig, make_explorer_server, serve_until_stopped
from attnlab.viz.heatmap import attention_heatmap, plot_attention, token_labels

__all__ = [
    "AttentionCapture", "Explorer", "ExplorerConfig", "attention_heatmap", "attention_layers", "capture_attention",
    "check_indices", "make_explorer_server", "plot_attention", "serve_until_stopped", "token_labels",
]
