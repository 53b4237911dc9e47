"""Classification metrics: accuracy, precision/recall/F1 and the confusion matrix.

Plain Python/numpy; predictions and labels may be lists, tuples, numpy arrays or
tensors (1-D, same length). Labels may be ints or strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

AVERAGES = ("macro", "micro", "binary")


def _to_array(x: Any, what: str) -> np.ndarray:
    """Return ``x`` as a 1-D numpy array (tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(arr.shape)}; flatten it or take argmax of logits first")
    return arr


def _check(preds: Any, labels: Any, classes: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (preds, labels) pair: same length, non-empty, values inside ``classes``."""
    p, y = _to_array(preds, "predictions"), _to_array(labels, "labels")
    if len(p) != len(y):
        raise ValueError(f"predictions and labels differ in length ({len(p)} vs {len(y)}); "
                         "pass one prediction per label")
    if len(p) == 0:
        raise ValueError("no predictions to score; pass at least one (prediction, label) pair")
    if classes is not None:
        allowed = set(classes)
        for name, arr in (("prediction", p), ("label", y)):
            bad = [v for v in arr.tolist() if v not in allowed]
            if bad:
                raise ValueError(f"{name} {bad[0]!r} is not in the label set {sorted(allowed, key=str)}; "
                                 "fix the data or the label set")
    return p, y


def accuracy(preds: Any, labels: Any, *, classes: Sequence[Any] | None = None) -> float:
    """Fraction of predictions equal to their label.

    Args:
        preds: predicted labels, shape (N,).
        labels: gold labels, shape (N,).
        classes: optional label set; a value outside it raises ``ValueError``.

    Returns:
        Accuracy in [0, 1].
    """
    p, y = _check(preds, labels, classes)
    return float(np.mean(p == y))


def confusion_matrix(preds: Any, labels: Any, n_classes: int) -> np.ndarray:
    """Counts of (gold, predicted) pairs for integer labels ``0 .. n_classes-1``.

    Args:
        preds: predicted class ids, shape (N,).
        labels: gold class ids, shape (N,).
        n_classes: number of classes; ids outside ``range(n_classes)`` raise ``ValueError``.

    Returns:
        int64 array ``m`` of shape (n_classes, n_classes) where ``m[gold, pred]`` counts pairs.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    p, y = _check(preds, labels, range(n_classes))
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (y.astype(np.int64), p.astype(np.int64)), 1)
    return m


def _safe_div(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is 0 (the sklearn ``zero_division=0`` convention)."""
    return num / den if den else 0.0


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall and F1 from true-positive, false-positive and false-negative counts."""
    precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    return precision, recall, _safe_div(2 * precision * recall, precision + recall)


def precision_recall_f1(
    preds: Any,
    labels: Any,
    average: str = "macro",
    positive: Any = 1,
    *,
    classes: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Precision, recall and F1 (zero when a denominator is zero).

    Args:
        preds: predicted labels, shape (N,).
        labels: gold labels, shape (N,).
        average: ``"macro"`` (unweighted mean of per-class scores), ``"micro"`` (from
            pooled counts; equals accuracy when every class is counted) or ``"binary"``
            (scores of the ``positive`` class only; at most two classes).
        positive: the positive class for ``average="binary"``.
        classes: the label set; values outside it raise ``ValueError``. Defaults to
            every value seen in ``preds`` or ``labels``.

    Returns:
        ``{"precision", "recall", "f1"}``, each in [0, 1].
    """
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}; use one of {', '.join(AVERAGES)}")
    p, y = _check(preds, labels, classes)
    label_set = list(classes) if classes is not None else sorted(set(p.tolist()) | set(y.tolist()), key=str)
    counts = {c: (float(np.sum((p == c) & (y == c))),
                  float(np.sum((p == c) & (y != c))),
                  float(np.sum((p != c) & (y == c))))
              for c in label_set}
    if average == "binary":
        if len(label_set) > 2:
            raise ValueError(f"average='binary' needs at most 2 classes, got {len(label_set)}; "
                             "use average='macro' or 'micro'")
        if positive not in label_set and classes is not None:
            raise ValueError(f"positive class {positive!r} is not in the label set {label_set}; pass positive=")
        tp, fp, fn = counts.get(positive, (0.0, 0.0, 0.0))
        precision, recall, f1 = _prf(tp, fp, fn)
    elif average == "micro":
        tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
        precision, recall, f1 = _prf(tp, fp, fn)
    else:
        per_class = [_prf(*c) for c in counts.values()]
        precision, recall, f1 = (float(np.mean([s[i] for s in per_class])) for i in range(3))
    return {"precision": precision, "recall": recall, "f1": f1}
