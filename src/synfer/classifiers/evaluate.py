"""``synfer evaluate``: a classifier on a split of any dataset folder: accuracy, macro-F1, per-class recall,
confusion matrix (JSON + PNG), per-face predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.dataset import atomic_write_json
from ..core.metrics import classification_metrics
from ..core.runtime import autocast, resolve_device, resolve_precision
from ..core.splits import Split, load_split
from ..models.classifiers import ExpressionClassifier


@torch.no_grad()
def predict(model: ExpressionClassifier, data: Split, device: torch.device, batch_size: int = 256,
            tta: bool = False, precision: str = "fp32") -> np.ndarray:
    """Class probabilities (N, K) for a loaded split; ``tta`` averages over the face and its mirror image;
    ``precision``: autocast of the forward pass (:mod:`synfer.core.runtime`), softmax in fp32."""
    model.eval().to(device)
    precision = resolve_precision(precision, device)
    out = []
    for chunk in data.images.split(batch_size):
        x = chunk.to(device).float() / 255.0
        with autocast(device, precision):
            p = model(x).float().softmax(-1)
            if tta:
                p = 0.5 * (p + model(x.flip(-1)).float().softmax(-1))
        out.append(p.cpu())
    return torch.cat(out).numpy()


def plot_confusion(cm: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (recall per true class) with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.8 + 0.7 * len(names)), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def format_metrics(m: dict[str, Any], title: str) -> str:
    lines = [title, f"  accuracy {m['accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}   mean recall "
                    f"{m['mean_recall']:.4f}   n={m['n']}", "  per-class recall:"]
    for name, c in m["per_class"].items():
        r = "   n/a" if c["recall"] is None else f"{c['recall']:.4f}"
        lines.append(f"    {name:<10} {r}  (n={c['support']})")
    return "\n".join(lines)


def evaluate(
    model: str,
    data: Path,
    split: str = "test",
    out: Path | None = None,
    tta: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "fp32",
) -> str:
    """Evaluate a classifier on a split of a dataset folder.

    Args:
        model: classifier folder (config.json + model.safetensors) or a bundled name (``ferplus-resnet-s``).
        data: dataset folder; its expression order must equal the model's (else a clear error). A synthetic
            folder generated with this classifier as its semantic-guidance model is refused.
        split: split to evaluate (``test`` for final reporting; choose models on ``val``).
        out: folder for ``metrics.json``, ``confusion_matrix.png`` and ``predictions.jsonl`` (optional).
        tta: average predictions over the face and its mirror image.
        batch_size: faces per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        precision: autocast of the forward passes (``fp32``, ``bf16``, ``fp16``, ``auto``; see
            :mod:`synfer.core.runtime`); fp32 by default so that reported figures are exact (bf16 changes a few
            predictions in a thousand: benchmarks/fer_precision.py).

    Returns:
        a printable summary (the CLI prints it).
    """
    from ..core.provenance import refuse_judge

    refuse_judge(data, model, labels=False)  # a classifier never judges faces it guided
    dev = resolve_device(device)
    clf = ExpressionClassifier.from_pretrained(model)
    split_data = load_split(data, split, expressions=clf.label_names, input_size=tuple(clf.config.input_size))
    probs = predict(clf, split_data, dev, batch_size=batch_size, tta=tta, precision=precision)
    pred = probs.argmax(1)
    m = classification_metrics(split_data.labels.numpy(), pred, clf.label_names)
    m.update({"model": str(model), "data": str(data), "split": split, "tta": tta,
              "precision": resolve_precision(precision, dev)})
    title = f"{model} on {data}:{split}{' (TTA: mirror)' if tta else ''}"
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "metrics.json", m)
        plot_confusion(np.asarray(m["confusion_matrix"]), clf.label_names, out / "confusion_matrix.png", title)
        tmp = out / ".tmp-predictions.jsonl"
        with open(tmp, "w") as f:
            for rid, y, p in zip(split_data.ids, split_data.labels.tolist(), probs, strict=True):
                f.write(json.dumps({"id": rid, "label": clf.label_names[y], "pred": clf.label_names[int(p.argmax())],
                                    "probs": [round(float(v), 5) for v in p]}) + "\n")
        tmp.replace(out / "predictions.jsonl")
    return format_metrics(m, title)
