"""Interoperability with other libraries' checkpoints (Hugging Face ``transformers``).

    from attnlab.interop import from_hf, to_hf
    encoder = from_hf("path/to/bert-dir")        # BERT, T5, GPT-2 or Llama weights (one file or shards) → attnlab model
    model, tok = from_hf("dir", with_tokenizer=True)        # ... and its tokenizer.json (None if it has none)
    hf_model = to_hf(model, "out-dir", tokenizer=tok)       # → transformers model + save_pretrained + tokenizer files
    to_hf(model, "out-dir", max_shard_size="200MB")         # sharded safetensors + model.safetensors.index.json
"""

from attnlab.interop.export import to_hf
from attnlab.interop.hf import LAYOUTS, Layout, from_hf

__all__ = ["LAYOUTS", "Layout", "from_hf", "to_hf"]
