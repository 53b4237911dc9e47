"""Generation metrics: corpus BLEU and chrF (sacrebleu) and ROUGE (rouge-score).

BLEU and ROUGE tokenize by the references' language (``lang="auto"``: detected; see
:mod:`attnlab.eval.lang`): Chinese is scored with sacrebleu's ``zh`` tokenizer and ROUGE over
characters, and each result says which tokenization it used (``bleu_tokenize``,
``rouge_tokenize``). chrF works on characters and needs none.

Both packages are optional: ``pip install 'attnlab[eval]'``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from attnlab.errors import AttnlabError
from attnlab.eval.lang import AUTO, ROUGE_TOKENIZE, RougeTokenizer, tokenization

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
    lang: str = AUTO,
) -> dict[str, Any]:
    """Corpus BLEU with sacrebleu (exponential smoothing), tokenized for the references' language.

    Args:
        hypotheses: one detokenized system output per segment.
        references: per segment, one reference string or a list of references (the
            count may vary across segments).
        tokenize: sacrebleu tokenizer name (``"13a"``, ``"intl"``, ``"zh"``, ...); ``None``:
            chosen by ``lang``.
        lowercase: case-insensitive BLEU.
        lang: the references' language: ``"auto"`` (detected: ``zh`` for Chinese text,
            ``char`` for Japanese, else sacrebleu's default ``13a``), or a code (``zh``, ``ja``,
            ``ko``, ``en``...); see :mod:`attnlab.eval.lang`.

    Returns:
        ``{"bleu": score in [0, 100], "signature": sacrebleu signature string, "bleu_tokenize":
        the tokenizer used}``.

    Raises:
        ValueError: both ``tokenize`` and a ``lang`` other than ``"auto"``, or a bad ``lang``.
    """
    sacrebleu = _require("sacrebleu", "sacrebleu", "bleu")
    if tokenize is not None and lang != AUTO:
        raise ValueError(f"bleu: give tokenize ({tokenize!r}) or lang ({lang!r}), not both")
    if tokenize is None:
        _per_example_refs(hypotheses, references, "bleu")  # bad input: its own error, before detection
        tokenize = tokenization(references, lang).bleu_tokenize
    metric = sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase)
    return {**_corpus_score(metric, "bleu", hypotheses, references), "bleu_tokenize": tokenize}


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
    tokenize: str | None = None,
    lang: str = AUTO,
) -> dict[str, Any]:
    """Mean ROUGE F-measure ×100 with rouge-score, tokenized for the references' language.

    Args:
        predictions: one generated text per example.
        references: per example, one reference string or a list (the best-scoring
            reference counts, as in rouge-score's ``score_multi``).
        use_stemmer: apply the Porter stemmer (to English words) before matching.
        rouge_types: rouge-score type names, e.g. ``"rouge1"``, ``"rouge2"``, ``"rougeL"``.
        tokenize: ``"default"`` (rouge-score's), ``"char"`` or ``"words"`` (see
            :class:`attnlab.eval.lang.RougeTokenizer`); ``None``: chosen by ``lang``.
        lang: the references' language: ``"auto"`` (detected: characters for Chinese and
            Japanese, Hangul words for Korean, else rouge-score's own tokenizer, which keeps
            ASCII letters and digits only), or a code (``zh``, ``ja``, ``ko``, ``en``...).

    Returns:
        ``{rouge_type: mean F-measure in [0, 100], ..., "rouge_tokenize": "default" | "char" | "words"}``.

    Raises:
        ValueError: mismatched or empty inputs, both ``tokenize`` and a ``lang`` other than
            ``"auto"``, or a bad ``tokenize`` or ``lang``.
    """
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score", "rouge")
    refs = _per_example_refs(predictions, references, "rouge")
    if tokenize is not None and lang != AUTO:
        raise ValueError(f"rouge: give tokenize ({tokenize!r}) or lang ({lang!r}), not both")
    kind = tokenize if tokenize is not None else tokenization(refs, lang).rouge_tokenize
    if kind not in ROUGE_TOKENIZE:
        raise ValueError(f"rouge: unknown tokenize {kind!r}; choose from {', '.join(ROUGE_TOKENIZE)}")
    tokenizer = None if kind == "default" else RougeTokenizer(kind, use_stemmer)
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer, tokenizer=tokenizer)
    totals = dict.fromkeys(rouge_types, 0.0)
    for pred, r in zip(predictions, refs, strict=False):
        scores = scorer.score(r[0], pred) if len(r) == 1 else scorer.score_multi(r, pred)
        for t in rouge_types:
            totals[t] += scores[t].fmeasure
    return {**{t: 100.0 * s / len(predictions) for t, s in totals.items()}, "rouge_tokenize": kind}
