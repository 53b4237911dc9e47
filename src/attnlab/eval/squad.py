"""SQuAD exact match and token F1, following the official v1.1 evaluation rules.

Answers are compared after :func:`normalize_answer`; a question scores the best match
over its gold answers. SQuAD 2.0 unanswerable questions (no gold answer, or an empty
one) score 1 only when the prediction is empty after normalization.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

from attnlab.data.text_norm import normalize_answer


def _golds(golds: str | Sequence[str]) -> list[str]:
    """Gold answers as a list; a bare string is one answer, an empty list means no answer."""
    if isinstance(golds, str):
        return [golds]
    return list(golds) or [""]


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """Harmonic mean of token precision and recall (bag-of-tokens overlap)."""
    if not pred_tokens or not gold_tokens:  # no-answer case: right only if both are empty
        return float(pred_tokens == gold_tokens)
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized gold answer, else 0.0."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _golds(golds)))


def f1(pred: str, golds: str | Sequence[str]) -> float:
    """Best token-overlap F1 of the prediction against the gold answers, in [0, 1]."""
    p = normalize_answer(pred).split()
    return max(_token_f1(p, normalize_answer(g).split()) for g in _golds(golds))


def squad_scores(
    predictions: Mapping[str, str], references: Mapping[str, str | Sequence[str]]
) -> dict[str, float]:
    """Corpus exact match and F1 as percentages, like the official script.

    Args:
        predictions: question id -> predicted answer text. Ids not in ``references``
            are ignored.
        references: question id -> gold answers (a list, possibly empty for an
            unanswerable question, or one string).

    Returns:
        ``{"exact_match", "f1"}`` in [0, 100], plus ``"total"`` (questions scored) and
        ``"missing"`` (questions without a prediction; each scores 0 and is named in a
        warning).
    """
    if not references:
        raise ValueError("no reference questions to score; pass a non-empty id -> answers mapping")
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        warnings.warn(f"{len(missing)} of {len(references)} questions have no prediction and score 0: {shown}",
                      stacklevel=2)
    em_sum = f1_sum = 0.0
    for qid, golds in references.items():
        if qid in predictions:
            em_sum += exact_match(predictions[qid], golds)
            f1_sum += f1(predictions[qid], golds)
    n = len(references)
    return {"exact_match": 100.0 * em_sum / n, "f1": 100.0 * f1_sum / n, "total": float(n),
            "missing": float(len(missing))}
