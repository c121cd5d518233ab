"""Ensemble voting over annotators (SynFER §4): keep a face's label where every annotator agrees with it, relabel it
with the ensemble's mean where they do not, and optionally drop a relabelled face the ensemble is unsure of.

Truth table for one face with target label y (its intended expression) and annotators' top classes c_1..c_A:

| case                                   | status    | label              | soft label |
|----------------------------------------|-----------|--------------------|------------|
| c_1 = ... = c_A = y                    | agree     | y                  | mean       |
| no target, c_1 = ... = c_A             | agree     | c_1                | mean       |
| otherwise, max(mean) >= threshold      | relabel   | argmax(mean)       | mean       |
| otherwise, max(mean) < threshold       | drop      | (face not written) |            |

(With no threshold nothing is dropped.) "relabel" keeps the soft label, so a face the ensemble splits between two
classes trains as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATUSES = ("agree", "relabel", "drop")


@dataclass
class VoteResult:
    """Per face: ``label`` (N,) class index (-1 where dropped), ``soft`` (N, K) the ensemble mean, ``status`` (N,)
    one of :data:`STATUSES`."""

    label: np.ndarray
    soft: np.ndarray
    status: np.ndarray


def vote(probs: np.ndarray, targets: np.ndarray | None = None, threshold: float | None = None) -> VoteResult:
    """Vote over annotators.

    Args:
        probs: (A, N, K) each annotator's class probabilities (A >= 1).
        targets: (N,) intended class per face, -1 (or None for all) where a face has none.
        threshold: drop relabelled faces whose ensemble confidence max(mean) is below this; None keeps all.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"probs must be (annotators, faces, classes); got shape {probs.shape}.")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]; got {threshold}.")
    n = probs.shape[1]
    targets = np.full(n, -1) if targets is None else np.asarray(targets)
    if targets.shape != (n,):
        raise ValueError(f"targets must be ({n},); got {targets.shape}.")
    soft = probs.mean(0)
    top = probs.argmax(-1)  # (A, N)
    unanimous = (top == top[0]).all(0)
    agree = unanimous & ((targets < 0) | (top[0] == targets))
    label = np.where(agree, top[0], soft.argmax(-1))
    status = np.where(agree, "agree", "relabel").astype(object)
    if threshold is not None:
        drop = ~agree & (soft.max(-1) < threshold)
        status[drop] = "drop"
        label = np.where(drop, -1, label)
    return VoteResult(label.astype(np.int64), soft, status.astype(str))


def summarise(result: VoteResult, targets: np.ndarray, names: list[str]) -> dict:
    """Agreement, relabel and drop counts and rates, overall and per target class (faces with a target)."""
    n = len(result.status)
    summary = {"faces": n, **{s: int((result.status == s).sum()) for s in STATUSES},
               **{f"{s}_rate": round(float((result.status == s).mean()), 4) if n else 0.0 for s in STATUSES}}
    per_class = {}
    for k, name in enumerate(names):
        mine = targets == k
        if mine.any():
            per_class[name] = {s: int((result.status[mine] == s).sum()) for s in STATUSES}
            moved = mine & (result.status == "relabel")
            per_class[name]["relabelled_to"] = {names[j]: int((result.label[moved] == j).sum())
                                                for j in range(len(names)) if (result.label[moved] == j).any()}
    summary["per_class"] = per_class
    return summary
