"""Classification metrics for expression recognition (NumPy only; shared by training, evaluation and reports)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts; rows are true classes, columns predictions."""
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over classes present in ``y_true``), per-class recall / precision / F1 / support, and
    the confusion matrix.

    Args:
        y_true, y_pred: (N,) integer labels in ``names`` order.
        names: class names.
    """
    k = len(names)
    cm = confusion_matrix(y_true, y_pred, k)
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(recall + precision > 0, 2 * recall * precision / (recall + precision), 0.0)
    present = support > 0
    return {
        "n": int(cm.sum()),
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "macro_f1": float(np.mean(f1[present])) if present.any() else 0.0,
        "mean_recall": float(np.nanmean(recall)) if present.any() else 0.0,
        "per_class": {
            n: {"recall": None if np.isnan(recall[i]) else float(recall[i]), "precision": float(precision[i]),
                "f1": float(f1[i]), "support": int(support[i])}
            for i, n in enumerate(names)
        },
        "labels": list(names),
        "confusion_matrix": cm.tolist(),
    }
