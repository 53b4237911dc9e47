"""Perplexity and a name -> metric registry over the task metrics.

Every registered metric takes ``(predictions, references, **kw)`` and returns a dict of
named scores, so callers (the CLI, fine-tuning recipes) can treat them alike::

    compute("squad", {"q1": "Paris"}, {"q1": ["Paris", "the city of Paris"]})
    compute("bleu", ["the cat sat on the mat"], [["the cat sat on the mat"]])

Scales follow each metric's convention: accuracy/precision/recall/F1 in [0, 1];
SQuAD, BLEU, chrF and ROUGE in [0, 100].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from attnlab.errors import did_you_mean
from attnlab.eval.classification import accuracy, confusion_matrix, precision_recall_f1
from attnlab.eval.generation import bleu, chrf, rouge
from attnlab.eval.squad import exact_match, f1, normalize_answer, squad_scores

_MAX_LOG = math.log(1.7976931348623157e308)  # largest finite exp() argument for a float64


def perplexity(loss_nats: Any) -> float:
    """``exp(loss)`` of a mean cross-entropy in nats; ``inf`` instead of overflowing.

    Args:
        loss_nats: a mean loss (float or 0-d tensor), or a sequence/tensor of per-token
            losses, which are averaged first.

    Returns:
        The perplexity, ``>= 1`` for a non-negative loss.
    """
    if hasattr(loss_nats, "detach"):
        loss_nats = loss_nats.detach().double().cpu().reshape(-1).tolist()
    if isinstance(loss_nats, (list, tuple)):
        if not loss_nats:
            raise ValueError("perplexity of an empty list of losses; pass at least one loss")
        loss = math.fsum(float(x) for x in loss_nats) / len(loss_nats)
    else:
        loss = float(loss_nats)
    if math.isnan(loss) or loss < 0:
        raise ValueError(f"perplexity needs a non-negative cross-entropy in nats, got {loss}")
    return math.inf if loss > _MAX_LOG else math.exp(loss)


def _accuracy(predictions: Any, references: Any, **kw: Any) -> dict[str, float]:
    return {"accuracy": accuracy(predictions, references, **kw)}


def _perplexity(predictions: Any, references: Any = None, **kw: Any) -> dict[str, float]:
    if kw:
        raise TypeError(f"perplexity takes no options, got {sorted(kw)}")
    return {"perplexity": perplexity(predictions)}


METRICS: dict[str, Callable[..., dict[str, Any]]] = {
    "accuracy": _accuracy,
    "f1": precision_recall_f1,
    "squad": squad_scores,
    "bleu": bleu,
    "chrf": chrf,
    "rouge": rouge,
    "perplexity": _perplexity,
}


def compute(name: str, predictions: Any, references: Any = None, **kw: Any) -> dict[str, Any]:
    """Run the metric registered as ``name`` and return its named scores.

    Args:
        name: a key of :data:`METRICS`.
        predictions: model outputs (labels, answers by id, texts, or losses for perplexity).
        references: gold labels/answers/texts (unused by perplexity).
        **kw: options of that metric, e.g. ``average="micro"`` or ``use_stemmer=True``.
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric '{name}'{did_you_mean(name, METRICS)}; choose from {', '.join(METRICS)}")
    return METRICS[name](predictions, references, **kw)


__all__ = [
    "METRICS", "accuracy", "bleu", "chrf", "compute", "confusion_matrix", "exact_match", "f1",
    "normalize_answer", "perplexity", "precision_recall_f1", "rouge", "squad_scores",
]
