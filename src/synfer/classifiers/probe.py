"""Frozen-backbone evaluation: linear probe and few-shot, for the representation-learning studies (SynFER §5).

The backbone is frozen; its pooled features (``ExpressionClassifier.embed``) are standardised with statistics of
the training faces and a multinomial logistic regression is fitted on them (full-batch L-BFGS). The L2 weight is
chosen on the validation split; the reported split is only scored. Few-shot draws ``k`` faces per class from the
training split, once per seed, and reports the mean and standard deviation over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.dataset import atomic_write_json
from ..core.metrics import classification_metrics
from ..core.runtime import resolve_device
from ..core.splits import load_split
from ..models.classifiers import ExpressionClassifier

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@torch.no_grad()
def embed_split(model: ExpressionClassifier, images: torch.Tensor, device: torch.device,
                batch_size: int = 256) -> torch.Tensor:
    """Frozen pooled features (N, D) of uint8 faces (N, C, H, W)."""
    model.eval().to(device)
    return torch.cat([model.embed(c.to(device).float() / 255.0).float().cpu() for c in images.split(batch_size)])


def fit_logistic(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, max_iter: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS; ``x`` (N, D) standardised, ``y`` (N,)."""
    torch.manual_seed(0)  # deterministic for given data (L-BFGS itself is deterministic from a zero start)
    head = torch.nn.Linear(x.shape[1], k)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + l2 * head.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head


def _few_shot_indices(labels: np.ndarray, k: int, shots: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = []
    for c in range(k):
        pool = np.flatnonzero(labels == c)
        if len(pool):
            idx.append(rng.choice(pool, min(shots, len(pool)), replace=False))
    return np.concatenate(idx)


def probe(
    model: str,
    data: Path,
    out: Path | None = None,
    train_split: str = "train",
    val_split: str = "val",
    eval_split: str = "test",
    shots: list[int] | None = None,
    seeds: list[int] | None = None,
    device: str = "auto",
) -> str:
    """Linear probe (all training faces) and few-shot probes (``shots`` per class) of a frozen backbone.

    Args:
        model: classifier folder or bundled name whose backbone is probed (its head is ignored).
        data: labelled dataset folder; its expression order must equal the model's.
        out: folder for ``probe.json`` (optional).
        train_split, val_split, eval_split: fit on the first, choose the L2 weight on the second, score the
            third.
        shots: faces per class for few-shot probes (default [10]); the full linear probe always runs.
        seeds: few-shot draws (default [0, 1, 2, 3, 4]).
        device: ``auto``, ``cpu``, ``cuda``.

    Returns:
        a printable summary.
    """
    dev = resolve_device(device)
    clf = ExpressionClassifier.from_pretrained(model)
    size = tuple(clf.config.input_size)
    splits = {s: load_split(data, s, expressions=clf.label_names, input_size=size)
              for s in (train_split, val_split, eval_split)}
    feats = {s: embed_split(clf, d.images, dev) for s, d in splits.items()}
    labels = {s: d.labels for s, d in splits.items()}
    k = len(clf.label_names)

    def run(train_idx: np.ndarray) -> dict[str, Any]:
        xt = feats[train_split][train_idx]
        mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
        norm = {s: (f - mean) / std for s, f in feats.items()}
        scores = {}
        for l2 in L2_GRID:  # chosen on validation only
            head = fit_logistic(norm[train_split][train_idx], labels[train_split][train_idx], k, l2)
            scores[l2] = (head(norm[val_split]).argmax(1) == labels[val_split]).float().mean().item()
        l2 = max(scores, key=scores.get)
        head = fit_logistic(norm[train_split][train_idx], labels[train_split][train_idx], k, l2)
        pred = head(norm[eval_split]).argmax(1).detach().numpy()
        m = classification_metrics(labels[eval_split].numpy(), pred, clf.label_names)
        return {"l2": l2, "val_accuracy": scores[l2], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    all_idx = np.arange(len(labels[train_split]))
    result: dict[str, Any] = {"model": str(model), "data": str(data), "eval_split": eval_split,
                              "linear_probe": run(all_idx), "few_shot": {}}
    for n in shots or [10]:
        runs = [run(_few_shot_indices(labels[train_split].numpy(), k, n, s)) for s in (seeds or [0, 1, 2, 3, 4])]
        accs = np.array([r["accuracy"] for r in runs])
        result["few_shot"][str(n)] = {"accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std()),
                                      "seeds": seeds or [0, 1, 2, 3, 4], "runs": runs}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "probe.json", result)
    lp = result["linear_probe"]
    lines = [f"{model} (frozen) on {data}:{eval_split}",
             f"  linear probe: accuracy {lp['accuracy']:.4f}  macro-F1 {lp['macro_f1']:.4f}  (L2 {lp['l2']:g} "
             f"chosen on {val_split})"]
    for n, r in result["few_shot"].items():
        lines.append(f"  {n}-shot: accuracy {r['accuracy_mean']:.4f} +- {r['accuracy_std']:.4f} over "
                     f"{len(r['runs'])} seeds")
    return "\n".join(lines)
