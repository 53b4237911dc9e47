"""Generation metrics: corpus BLEU and chrF (sacrebleu) and ROUGE (rouge-score).

Both packages are optional: ``pip install 'attnlab[eval]'``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from attnlab.errors import AttnlabError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _require(module: str, package: str, metric: str) -> ModuleType:
    """Import an optional dependency or raise a one-line error naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise AttnlabError(f"{metric} needs the '{package}' package: pip install 'attnlab[eval]'") from e


def _per_example_refs(predictions: Sequence[str], references: Sequence[Any], what: str) -> list[list[str]]:
    """Validate lengths and return one list of reference strings per prediction."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError(f"{what} takes lists of strings, not a single string; wrap it in a list")
    if len(predictions) != len(references):
        raise ValueError(f"{what}: {len(predictions)} predictions but {len(references)} references; "
                         "pass one entry per prediction")
    if len(predictions) == 0:
        raise ValueError(f"{what}: no predictions to score; pass at least one")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, r in enumerate(refs):
        if not r:
            raise ValueError(f"{what}: prediction {i} has no reference; give at least one reference string")
    return refs


def bleu(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    tokenize: str | None = None,
    lowercase: bool = False,
) -> dict[str, Any]:
    """Corpus BLEU with sacrebleu (default 13a tokenization, exponential smoothing).

    Args:
        hypotheses: one detokenized system output per segment.
        references: per segment, one reference string or a list of references (the
            count may vary across segments).
        tokenize: sacrebleu tokenizer name (``"13a"``, ``"intl"``, ``"zh"``, ...);
            ``None`` keeps sacrebleu's default.
        lowercase: case-insensitive BLEU.

    Returns:
        ``{"bleu": score in [0, 100], "signature": sacrebleu signature string}``.
    """
    sacrebleu = _require("sacrebleu", "sacrebleu", "bleu")
    metric = sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase)
    return _corpus_score(metric, "bleu", hypotheses, references)


def _corpus_score(metric: Any, name: str, hypotheses: Sequence[str],
                  references: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, Any]:
    """``{name: score, "signature"}`` of a sacrebleu corpus metric over per-segment references."""
    refs = _per_example_refs(hypotheses, references, name)
    n_streams = max(len(r) for r in refs)
    # sacrebleu wants reference *streams*: stream j holds the j-th reference of every segment.
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(n_streams)]
    score = metric.corpus_score(list(hypotheses), streams)
    return {name: float(score.score), "signature": str(metric.get_signature())}


def chrf(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    word_order: int = 0,
) -> dict[str, Any]:
    """Corpus chrF with sacrebleu: an F-score over character n-grams (1-6, recall weighted β = 2).

    Character-based, so it needs no word tokenizer and credits partly right words, which makes it
    steadier than BLEU on short segments and small test sets.

    Args:
        hypotheses: one system output per segment.
        references: per segment, one reference string or a list of references.
        word_order: word n-gram order; 2 gives chrF++.

    Returns:
        ``{"chrf": score in [0, 100], "signature": sacrebleu signature string}``.
    """
    sacrebleu = _require("sacrebleu", "sacrebleu", "chrf")
    return _corpus_score(sacrebleu.CHRF(word_order=word_order), "chrf", hypotheses, references)


def rouge(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    use_stemmer: bool = False,
    rouge_types: Sequence[str] = ROUGE_TYPES,
) -> dict[str, float]:
    """Mean ROUGE F-measure ×100 with rouge-score.

    Args:
        predictions: one generated text per example.
        references: per example, one reference string or a list (the best-scoring
            reference counts, as in rouge-score's ``score_multi``).
        use_stemmer: apply the Porter stemmer before matching.
        rouge_types: rouge-score type names, e.g. ``"rouge1"``, ``"rouge2"``, ``"rougeL"``.

    Returns:
        ``{rouge_type: mean F-measure in [0, 100]}``.
    """
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score", "rouge")
    refs = _per_example_refs(predictions, references, "rouge")
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    totals = dict.fromkeys(rouge_types, 0.0)
    for pred, r in zip(predictions, refs, strict=False):
        scores = scorer.score(r[0], pred) if len(r) == 1 else scorer.score_multi(r, pred)
        for t in rouge_types:
            totals[t] += scores[t].fmeasure
    return {t: 100.0 * s / len(predictions) for t, s in totals.items()}
