"""``synfer quality``: how good is a synthetic set? Judged by a classifier that neither guided nor labelled it.

* expression accuracy: the share of faces the judge assigns to their label (per class and overall), next to the
  judge's own accuracy and mean per-class recall on the real faces (on a class-balanced set, faces as recognisable
  as real ones would score that mean recall);
* FD-FER: the Fréchet distance between Gaussians fitted to the judge's pooled features of the synthetic faces and of
  real test faces (FID's formula in an expression classifier's feature space, hence not called FID);
* KID-FER: the unbiased squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 over random subsets
  (mean and std), in the same feature space;
* diversity: mean pairwise cosine distance of the judge's features within each class (synthetic and real, so a set
  that collapses to one face per class shows);
* AU control (sets with target AUs): Pearson r per AU between targets and what an AU estimator measures on the faces;
* privacy and diversity against the generator's training faces (``--train``; :mod:`synfer.study.privacy`): distance
  from each face to its nearest training face in pixels and in the judge's features, next to the same for real
  test faces, near-copies below the real faces' 1st percentile, distinct nearest training faces per class, and a
  gallery of the closest pairs.

    synfer quality runs/syn --real runs/ferplus --judge ferplus-vgg13s-judge --train runs/ferplus \
        --out runs/syn/quality.json --gallery runs/syn/closest.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.dataset import DatasetFolder, atomic_write_json
from ..core.splits import load_split
from ..schema import check_same_order


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) of features (N, D) and (M, D).

    The matrix square roots come from symmetric eigendecompositions (no complex parts to discard)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ sb @ root_a)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 500,
                    seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over ``subsets`` random subsets of both sets (each
    ``subset_size`` or the smaller set's size); returns (mean, std)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("kernel_distance needs at least 2 faces in each set.")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def diversity(features: np.ndarray, labels: np.ndarray, names: list[str], max_per_class: int = 1000,
              seed: int = 0) -> dict[str, float]:
    """Mean pairwise cosine distance of features within each class (up to ``max_per_class`` faces each)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, name in enumerate(names):
        f = features[labels == k]
        if len(f) < 2:
            continue
        f = f[rng.choice(len(f), min(len(f), max_per_class), replace=False)]
        f = f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)
        sim = f @ f.T
        n = len(f)
        out[name] = round(float(1 - (sim.sum() - n) / (n * (n - 1))), 4)
    out["mean"] = round(float(np.mean([v for v in out.values()])), 4) if out else float("nan")
    return out


@torch.no_grad()
def judge_features(judge: Any, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """uint8 faces (N, C, H, W) -> (pooled features (N, D), probabilities (N, K)) of an ExpressionClassifier."""
    judge.eval()
    device = judge.mean.device
    feats, probs = [], []
    for chunk in images.split(batch_size):
        x = chunk.to(device).float() / 255
        f = judge.forward_features(x)
        feats.append(judge.forward_head(f, pre_logits=True).float().cpu())
        probs.append(judge.forward_head(f).float().softmax(-1).cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def _recalls(metrics: dict[str, Any], names: list[str]) -> dict[str, float]:
    """Per-class recall in % (one decimal) of the classes present, from ``classification_metrics``."""
    return {n: round(100 * float(metrics["per_class"][n]["recall"]), 1) for n in names
            if metrics["per_class"][n]["support"]}


def quality(
    data: list[Path],
    real: Path,
    judge: str,
    split: str | None = None,
    real_split: str = "test",
    train: Path | None = None,
    train_split: str = "train",
    near_copy_quantile: float = 0.01,
    gallery: Path | None = None,
    au_estimator: str | None = "distilled",
    au_model: Path | None = None,
    kid_subsets: int = 50,
    kid_subset_size: int = 500,
    limit: int | None = None,
    seed: int = 0,
    device: str = "auto",
    out: Path | None = None,
) -> dict[str, Any]:
    """Generation-quality metrics of a synthetic dataset folder (see the module docs).

    Args:
        data: the synthetic dataset folder(s), judged as one set (labels: their ``expression``, i.e. the target or
            the voted label).
        real: a real labelled dataset folder in the same expression order (``real_split`` is the reference).
        judge: a classifier folder or bundled name that did not guide the set's generation nor label it.
        split: only this split of ``data`` (default all records).
        real_split: the real faces compared with (FER+ test for final reporting).
        train: the generator's training faces (a dataset folder, its ``train_split``) for the privacy audit
            (None: no audit).
        train_split: that split.
        near_copy_quantile: a generated face nearer to a training face than this quantile of the real test faces'
            nearest-training-face distances is a near-copy.
        gallery: a PNG of the closest generated / training pairs (with ``train``).
        au_estimator: estimator for AU control on sets with target AUs (``distilled``, ``mediapipe`` ...; None
            skips it).
        au_model: the estimator's model (MediaPipe's ``face_landmarker.task``; the distilled one defaults to the
            bundled CNN).
        kid_subsets, kid_subset_size: KID-FER's subsets.
        limit: at most this many faces of each set (quick runs).
        seed: the subsets' and diversity's draws.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda:1`` ...
        out: write the result as JSON here too.

    Returns:
        the metrics (also printed by the CLI).
    """
    from ..core.assets import resolve
    from ..core.metrics import classification_metrics
    from ..core.provenance import files_sha256, refuse_judge
    from ..core.runtime import resolve_device
    from ..models.classifiers import ExpressionClassifier

    data = [Path(p) for p in ([data] if isinstance(data, (str, Path)) else data)]
    if not data:
        raise ValueError("Give at least one synthetic dataset folder.")
    judge_sha = files_sha256(resolve("classifier", judge))
    folders = [DatasetFolder(p) for p in data]
    for path in data:
        refuse_judge(path, judge)
    model = ExpressionClassifier.from_pretrained(judge).to(resolve_device(device))
    names = list(folders[0].expressions)
    for path in data:
        model.check_labels(list(DatasetFolder(path).expressions), str(path))
    size = tuple(model.config.input_size)
    parts = [load_split(p, s, expressions=names, input_size=size, limit=limit)
             for p, f in zip(data, folders, strict=True) for s in ([split] if split else sorted(set(f.column("split"))))]
    syn_images = torch.cat([p.images for p in parts])
    syn_labels = torch.cat([p.labels for p in parts]).numpy()
    ref = load_split(real, real_split, expressions=names, input_size=size, limit=limit)
    syn_f, syn_p = judge_features(model, syn_images)
    real_f, real_p = judge_features(model, ref.images)
    m = classification_metrics(syn_labels, syn_p.argmax(-1), names)
    # the judge on the real faces: what "recognised" means for it (on a class-balanced set, faces as recognisable as
    # real ones would score its mean per-class recall on real faces, not its accuracy)
    rm = classification_metrics(ref.labels.numpy(), real_p.argmax(-1), names)
    real_recall = _recalls(rm, names)
    kid, kid_std = kernel_distance(syn_f, real_f, kid_subsets, kid_subset_size, seed)
    result: dict[str, Any] = {
        "data": [str(p) for p in data], "real": f"{real}:{real_split}", "judge": str(judge),
        "judge_sha256": judge_sha, "faces": len(syn_labels),
        "real_faces": len(ref.labels),
        "expression_accuracy": round(100 * m["accuracy"], 2),
        "expression_recall": _recalls(m, names),
        "real_reference": {"expression_accuracy": round(100 * rm["accuracy"], 2),
                           "mean_recall": round(float(np.mean(list(real_recall.values()))), 2),
                           "expression_recall": real_recall},
        "fd_fer": round(frechet_distance(syn_f, real_f), 4),
        "kid_fer": {"mean": round(kid, 5), "std": round(kid_std, 5), "subsets": kid_subsets,
                    "subset_size": min(kid_subset_size, len(syn_f), len(real_f))},
        "diversity": {"synthetic": diversity(syn_f, syn_labels, names, seed=seed),
                      "real": diversity(real_f, ref.labels.numpy(), names, seed=seed)},
    }
    if au_estimator and all(f.header.aus is not None for f in folders):
        result["au_control"] = au_control(folders, split, au_estimator, au_model, limit)
    if train is not None:
        from .privacy import privacy_audit

        train_faces = load_split(train, train_split, expressions=names, input_size=size)
        train_f, _ = judge_features(model, train_faces.images)
        result["privacy"] = privacy_audit(syn_images, syn_labels, train_faces.images, ref.images, names,
                                          {"synthetic": syn_f, "train": train_f, "test": real_f},
                                          near_copy_quantile, gallery)
        result["privacy"]["train"] = f"{train}:{train_split}"
    if out is not None:
        atomic_write_json(Path(out), result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("diversity", "au_control", "privacy")}, indent=1))
    return result


def au_control(folders: list[DatasetFolder], split: str | None, estimator: str, au_model: Path | None = None,
               limit: int | None = None) -> dict[str, Any]:
    """Pearson r per AU between the records' target AUs and what ``estimator`` measures on their images."""
    from ..annotate.au import create_estimator
    from ..annotate.au.distill import au_agreement
    recs = [(f, r) for f in folders for r in f.records(split) if r.aus is not None][:limit]
    if not recs:
        return {"note": "no record has target AUs"}
    names = tuple(folders[0].au_names)
    for f in folders[1:]:
        check_same_order("AU", list(names), list(f.au_names), str(folders[0].path), str(f.path))
    est = create_estimator(estimator, au_model)
    measured, targets = [], []
    for i in range(0, len(recs), 256):
        chunk = [r for _, r in recs[i:i + 256]]
        res = est.estimate([f.load_image(r.image) for f, r in recs[i:i + 256]])
        cols = [list(est.au_set.names).index(n) for n in names if n in est.au_set.names]
        measured.append(np.asarray(res.aus)[:, cols])
        targets.append(np.asarray([[r.aus[j] for j, n in enumerate(names) if n in est.au_set.names] for r in chunk]))
    kept = tuple(n for n in names if n in est.au_set.names)
    agreement = au_agreement(np.concatenate(measured), np.concatenate(targets), kept)
    return {"estimator": estimator, "faces": len(recs), **agreement}
