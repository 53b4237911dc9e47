"""Looking inside models: attention capture and heatmaps.

    with capture_attention(model, layers=[0], heads=[0, 2]) as cap:
        model(input_ids)
    plot_attention(cap.weights, tokens, "attention.png", heads=cap.heads)

    attention_heatmap(model, tokenizer, "But soft, what light", "attention.png")
"""

from attnlab.viz.capture import AttentionCapture, attention_layers, capture_attention, check_indices
from attnlab.viz.heatmap import attention_heatmap, plot_attention, token_labels

__all__ = [
    "AttentionCapture", "attention_heatmap", "attention_layers", "capture_attention", "check_indices",
    "plot_attention", "token_labels",
]
