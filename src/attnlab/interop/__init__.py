"""Interoperability with other libraries' checkpoints (Hugging Face ``transformers``).

    from attnlab.interop.hf import from_hf, to_hf
    encoder = from_hf("path/to/bert-dir")        # BERT, T5, GPT-2 or Llama weights → attnlab model
    hf_model = to_hf(model, "out-dir")           # attnlab model → transformers model (+ save_pretrained)
"""

from attnlab.interop.hf import LAYOUTS, Layout, from_hf, to_hf

__all__ = ["LAYOUTS", "Layout", "from_hf", "to_hf"]
