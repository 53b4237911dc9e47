"""A bag-of-words baseline for text classification: logistic regression on TF-IDF n-grams.

It runs through the same recipe, trainer, metrics and ``attnlab eval`` as the
transformer classifiers; only the ``init`` changes::

    attnlab finetune classify sentiment-bow            # init: bow
    attnlab finetune classify sentiment-minilm init=bow train.out_dir=runs/bow   # same data, the baseline

The features of a text are its lower-cased word unigrams and bigrams
(``options.bow_ngrams``) seen in at least ``options.bow_min_count`` training texts,
weighted by sublinear TF-IDF (``(1 + log tf) · idf``, smoothed idf) and L2-normalised per
text. :class:`BagOfWordsClassifier` is a linear layer over that sparse vector (an
``nn.EmbeddingBag`` in sum mode, i.e. a sparse matrix product), so softmax cross-entropy
with AdamW's weight decay trains an L2-regularised multinomial logistic regression.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")
"""A word (with an optional clitic: ``don't``, ``film's``) or an exclamation/question mark."""


def ngrams(text: str, n: int) -> list[str]:
    """Lower-cased word n-grams of ``text`` for every order 1..n (``"not good"`` for a bigram)."""
    words = _WORD.findall(text.lower())
    return [" ".join(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)]


class NgramVocab:
    """The n-gram features of the training texts, with their inverse document frequencies.

    Args:
        grams: the feature n-grams, in feature-id order.
        idf: the idf of each feature.
        n: the largest n-gram order.
    """

    def __init__(self, grams: Sequence[str], idf: Sequence[float], n: int):
        if len(grams) != len(idf):
            raise ValueError(f"{len(grams)} n-grams but {len(idf)} idf values")
        self.grams, self.idf, self.n = list(grams), [float(x) for x in idf], n
        self.index = {g: i for i, g in enumerate(self.grams)}

    @classmethod
    def fit(cls, texts: Sequence[str], n: int = 2, min_count: int = 2) -> NgramVocab:
        """Features seen in at least ``min_count`` of ``texts``; idf = ln((1 + N) / (1 + df)) + 1."""
        df: Counter[str] = Counter()
        for t in texts:
            df.update(set(ngrams(t, n)))
        grams = sorted(g for g, c in df.items() if c >= min_count)
        total = len(texts)
        return cls(grams, [math.log((1 + total) / (1 + df[g])) + 1.0 for g in grams], n)

    def __len__(self) -> int:
        return len(self.grams)

    def encode(self, text: str) -> tuple[list[int], list[float]]:
        """Feature ids and their L2-normalised sublinear TF-IDF weights (both empty if nothing is known)."""
        counts = Counter(self.index[g] for g in ngrams(text, self.n) if g in self.index)
        ids = sorted(counts)
        weights = [(1.0 + math.log(counts[i])) * self.idf[i] for i in ids]
        norm = math.sqrt(sum(w * w for w in weights)) or 1.0
        return ids, [w / norm for w in weights]

    def to_state(self) -> dict[str, Any]:
        """JSON-able description (for ``task.json``)."""
        return {"n": self.n, "grams": self.grams, "idf": self.idf}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NgramVocab:
        """Inverse of :meth:`to_state`."""
        return cls(state["grams"], state["idf"], int(state["n"]))


def collate_bags(bags: Sequence[tuple[list[int], list[float]]]) -> dict[str, torch.Tensor]:
    """Bags of ``(ids, weights)`` → the flat ``ngram_ids`` (N,), ``offsets`` (B,) and ``ngram_weights`` (N,)."""
    lengths = [len(ids) for ids, _ in bags]
    offsets = [0]
    for n in lengths[:-1]:
        offsets.append(offsets[-1] + n)
    return {
        "ngram_ids": torch.tensor([i for ids, _ in bags for i in ids], dtype=torch.long),
        "offsets": torch.tensor(offsets, dtype=torch.long),
        "ngram_weights": torch.tensor([w for _, ws in bags for w in ws], dtype=torch.float32),
    }


class BagOfWordsClassifier(nn.Module):
    """Logistic regression over sparse n-gram features: ``logits = x W + b``.

    Args:
        n_features: number of n-gram features.
        n_classes: number of labels.
    """

    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.weights = nn.EmbeddingBag(max(n_features, 1), n_classes, mode="sum")  # W: (F, C)
        nn.init.zeros_(self.weights.weight)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, ngram_ids: torch.Tensor, offsets: torch.Tensor, ngram_weights: torch.Tensor) -> torch.Tensor:
        """(N,) feature ids, (B,) bag starts and (N,) weights → (B, n_classes) logits."""
        return self.weights(ngram_ids, offsets, per_sample_weights=ngram_weights) + self.bias  # (B, C)
