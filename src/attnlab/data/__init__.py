"""Text data: tokenizers, corpora, and tokenized datasets with stateless batching.

    from attnlab.data import prepare
    data = prepare(cfg.data)                      # tokenize once, cached by fingerprint
    x, y = data.get_batch("train", step, 16, 256, seed=cfg.train.seed)   # (B, T) int64
"""

from attnlab.data.corpus import builtin_names, iter_documents, read_documents
from attnlab.data.dataset import (
    TokenData,
    bits_per_byte,
    parse_bpe_spec,
    prepare,
    split_documents,
    token_dtype,
)
from attnlab.data.mlm import IGNORE_INDEX, mask_tokens, mlm_loss
from attnlab.data.tokenizer import EOS_TOKEN, Tokenizer

__all__ = [
    "EOS_TOKEN",
    "IGNORE_INDEX",
    "TokenData",
    "Tokenizer",
    "bits_per_byte",
    "mask_tokens",
    "mlm_loss",
    "builtin_names",
    "parse_bpe_spec",
    "prepare",
    "iter_documents",
    "read_documents",
    "split_documents",
    "token_dtype",
]
