"""Test-split scoring of a classifier and the uncertainty of differences between classifiers.

A study row is scored once on the real test split; its per-face predictions are kept, so any two rows can be
compared *paired* (the same test faces): the paired bootstrap resamples test faces with replacement and reads the
2.5th and 97.5th percentiles of the accuracy difference (Efron & Tibshirani 1993; the test set is the main source
of sampling noise a reader should see next to a gain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..classifiers.evaluate import predict
from ..core.metrics import classification_metrics
from ..core.splits import Split


def score_on_split(model_dir: str | Path, split: Split, precision: str = "fp32") -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall (%) of a classifier folder on a loaded split, and its per-face
    predicted class indices (in the split's order)."""
    from ..models.classifiers import ExpressionClassifier

    model = ExpressionClassifier.from_pretrained(model_dir)
    model.check_labels(list(split.names), split.name)
    pred = predict(model, split, torch.device("cpu"), precision=precision).argmax(1)
    m = classification_metrics(split.labels.numpy(), pred, list(split.names))
    return {"accuracy": round(100 * m["accuracy"], 2), "macro_f1": round(100 * m["macro_f1"], 2),
            "per_class_recall": {n: None if c["recall"] is None else round(100 * c["recall"], 2)
                                 for n, c in m["per_class"].items()},
            "predictions": [int(p) for p in pred]}


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 10_000,
                     seed: int = 0) -> dict[str, float]:
    """Accuracy difference a - b (points) over the same faces, with its paired-bootstrap 95% interval.

    ``correct_a``, ``correct_b``: (N,) bool, whether each model got face i right, or float in [0, 1]: the share of
    several models (seeds) that got it right.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired_bootstrap needs two (N,) arrays over the same faces; got {a.shape}, {b.shape}.")
    rng = np.random.default_rng(seed)
    diff = a - b
    sums = np.zeros(resamples)
    for start in range(0, resamples, 1000):  # 1000 resamples at a time: (1000, N) indices
        n = min(1000, resamples - start)
        sums[start:start + n] = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(1)
    lo, hi = np.percentile(sums, [2.5, 97.5])
    return {"difference": round(100 * float(diff.mean()), 2), "ci95": [round(100 * float(lo), 2),
                                                                       round(100 * float(hi), 2)],
            "resamples": resamples, "faces": len(diff)}


def unpaired_difference(acc_a: float, faces_a: int, acc_b: float, faces_b: int) -> dict[str, Any]:
    """Accuracy difference a - b (points) of one judge on two *different* sets of faces, with a normal 95% interval.

    ``acc_a``, ``acc_b``: accuracies in percent over ``faces_a`` and ``faces_b`` faces. Two generated sets share no
    faces (or, as a set and its relabelled copy, share them without per-face judgements kept), so no paired bootstrap
    applies; the interval is ``d +- 1.96 sqrt(p_a (1 - p_a) / n_a + p_b (1 - p_b) / n_b)``. Fixed per-class counts
    (the study's sets have them) and shared faces both make the true spread smaller: a gain whose interval excludes
    0 is a real one.
    """
    if faces_a < 1 or faces_b < 1 or not (0 <= acc_a <= 100 and 0 <= acc_b <= 100):
        raise ValueError(f"unpaired_difference needs accuracies in [0, 100] over >= 1 face each; got {acc_a} over "
                         f"{faces_a} and {acc_b} over {faces_b}.")
    pa, pb = acc_a / 100, acc_b / 100
    half = 1.96 * float(np.sqrt(pa * (1 - pa) / faces_a + pb * (1 - pb) / faces_b))
    d = pa - pb
    return {"difference": round(100 * d, 2), "ci95": [round(100 * (d - half), 2), round(100 * (d + half), 2)],
            "faces": [faces_a, faces_b]}
