"""Privacy and diversity of a synthetic set: how close its faces come to the generator's training faces.

For every generated face the nearest training face is found (Euclidean distance, in pixels and in a judge
classifier's pooled features). The same statistic for *real test faces* is the reference: a real face that was
never trained on sits at some distance from its nearest training face, and a generated face closer than nearly all
of them (below the ``quantile`` of the real distances; 1% by default) counts as a near-copy. FER2013 holds exact
copies of training images in its test split (about 250 of FER+'s test faces); they are removed from the reference
first, or they would pull the threshold to 0.

Reported per space: the generated and the real distances (min, 1st/5th percentile, median), the threshold, the
near-copy count and share; per class, how many distinct training faces are someone's nearest neighbour (a rare
class whose faces crowd near a few training faces shows here) and the most hits one training face takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.nearest import exact_copies, nearest, pixel_rows


def _summary(d: np.ndarray) -> dict[str, float]:
    if not len(d):
        return {}
    return {"min": round(float(d.min()), 4), "p1": round(float(np.percentile(d, 1)), 4),
            "p5": round(float(np.percentile(d, 5)), 4), "median": round(float(np.median(d)), 4)}


def audit_space(syn: np.ndarray, train: np.ndarray, real: np.ndarray, syn_labels: np.ndarray, names: list[str],
                quantile: float) -> dict[str, Any]:
    """One space's audit (module docs): ``syn`` (N, D) generated, ``train`` (M, D), ``real`` (R, D) test faces
    without exact copies of training faces; ``syn_labels`` (N,) class indices."""
    d_syn, i_syn = nearest(syn, train)
    d_real, _ = nearest(real, train)
    threshold = float(np.quantile(d_real, quantile))
    near = d_syn < threshold
    per_class = {}
    for k, name in enumerate(names):
        mine = syn_labels == k
        if mine.any():
            hits = np.bincount(i_syn[mine])
            per_class[name] = {"faces": int(mine.sum()), "distinct_nearest_training_faces": int((hits > 0).sum()),
                               "most_hits_on_one_training_face": int(hits.max()), "near_copies": int(near[mine].sum())}
    return {"threshold": round(threshold, 4), "threshold_quantile_of_real": quantile,
            "near_copies": int(near.sum()), "near_copy_share": round(float(near.mean()), 5),
            "synthetic_distance": _summary(d_syn), "real_test_distance": _summary(d_real),
            "per_class": per_class, "_nearest": (d_syn, i_syn)}


def privacy_audit(syn_images: torch.Tensor, syn_labels: np.ndarray, train_images: torch.Tensor,
                  test_images: torch.Tensor, names: list[str], features: dict[str, np.ndarray] | None = None,
                  quantile: float = 0.01, gallery: Path | None = None, gallery_size: int = 16) -> dict[str, Any]:
    """The audit in pixel space and, given ``features`` ({"synthetic", "train", "test"} judge features of the same
    faces), in feature space; optionally a PNG of the ``gallery_size`` closest pairs in pixels (generated face
    above its nearest training face)."""
    copies = exact_copies(test_images, train_images)
    keep = ~copies
    result: dict[str, Any] = {"training_faces": len(train_images), "real_test_faces": int(keep.sum()),
                              "test_faces_dropped_as_exact_training_copies": int(copies.sum())}
    pixels = audit_space(pixel_rows(syn_images), pixel_rows(train_images), pixel_rows(test_images[keep]),
                         syn_labels, names, quantile)
    d, idx = pixels.pop("_nearest")
    result["pixels"] = pixels
    if features is not None:
        feat = audit_space(features["synthetic"], features["train"], features["test"][keep], syn_labels, names,
                           quantile)
        feat.pop("_nearest")
        result["judge_features"] = feat
    if gallery is not None and len(d):
        from ..core.images import save_grid

        order = np.argsort(d)[:gallery_size]
        top = syn_images[torch.as_tensor(order)].float() / 255
        bottom = train_images[torch.as_tensor(idx[order])].float() / 255
        save_grid(torch.cat([top, bottom]), Path(gallery), nrow=len(order))
        result["gallery"] = str(gallery)
    return result
