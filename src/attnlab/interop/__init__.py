"""Interoperability with other libraries' checkpoints (Hugging Face ``transformers``).

    from attnlab.interop.hf import from_hf
    encoder = from_hf("path/to/bert-dir")        # BertModel weights → EncoderModel
"""

from attnlab.interop.hf import LAYOUTS, Layout, from_hf

__all__ = ["LAYOUTS", "Layout", "from_hf"]
