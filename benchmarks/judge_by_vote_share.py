"""Benchmark: how often the judge recognises a real face's majority label, by how many FER+ voters agreed on it.

    python benchmarks/judge_by_vote_share.py runs/ferplus_ce [--splits train val] [--classes contempt disgust]

DATA: FER+ imported with soft labels (``synfer import-ferplus ... --label-mode crossentropy``), so every record
carries its vote distribution. For each split and class, the faces whose majority label is the class are binned by
the share of votes it got (< 0.5, 0.5-0.7, >= 0.7) and the bundled classifier's recall is reported per bin.

Why: a class whose training faces are mostly ambiguous (few voters agree) gives a generator little to learn and a
judge little to recognise; this is the evidence behind the mini generator's contempt figure (model card). The
classifier was trained on FER+ train, so its train recall is optimistic; val is the fair split (small for the rare
classes: the bin counts are reported).

Writes benchmarks/results/judge_by_vote_share.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import machine_info, write_result

from synfer.classifiers.evaluate import predict
from synfer.core.splits import load_split
from synfer.models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier

BINS = ((0.0, 0.5, "< 0.5"), (0.5, 0.7, "0.5-0.7"), (0.7, 1.01, ">= 0.7"))


def recall_by_share(probs: np.ndarray, labels: np.ndarray, pred: np.ndarray, k: int) -> dict[str, dict]:
    """Per vote-share bin: faces of class ``k`` (majority label) and the fraction predicted as ``k``.

    Args:
        probs: (N, K) vote distributions; labels: (N,) majority labels; pred: (N,) predicted classes.
    """
    out = {}
    mine = labels == k
    for lo, hi, name in BINS:
        sel = mine & (probs[:, k] >= lo) & (probs[:, k] < hi)
        n = int(sel.sum())
        out[name] = {"faces": n, "recall": round(float((pred[sel] == k).mean()), 4) if n else None}
    out["all"] = {"faces": int(mine.sum()), "recall": round(float((pred[mine] == k).mean()), 4) if mine.any()
                  else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--splits", nargs="+", default=["train", "val"])
    ap.add_argument("--classes", nargs="+", default=None, help="default: every class")
    ap.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "judge_by_vote_share.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    clf = ExpressionClassifier.from_pretrained(args.classifier)
    names = list(clf.label_names)
    classes = args.classes or names
    unknown = sorted(set(classes) - set(names))
    if unknown:
        raise SystemExit(f"--classes {unknown}: not in the classifier's label order {names}.")
    result: dict = {"benchmark": "judge_by_vote_share", "data": str(args.data), "judge": args.classifier,
                    "bins": [b[2] for b in BINS], "splits": {}}
    for split in args.splits:
        data = load_split(args.data, split, expressions=names)
        probs = data.probs.numpy()
        if np.allclose(probs.max(-1), 1.0):
            raise SystemExit(f"{args.data}:{split} has one-hot labels only; import FER+ with "
                             "--label-mode crossentropy so the records keep their vote distributions.")
        pred = predict(clf, data, torch.device("cpu")).argmax(-1)
        labels = data.labels.numpy()
        result["splits"][split] = {c: recall_by_share(probs, labels, pred, names.index(c)) for c in classes}
    result["machine"] = machine_info()
    write_result(args.out, result)


if __name__ == "__main__":
    main()
