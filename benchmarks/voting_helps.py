"""Benchmark: do FERAnno + ensemble voting labels agree with an independent judge more often than the targets do?

    python benchmarks/voting_helps.py --data runs/bench/guidance/unguided-s0-n200 \
        --annotators ferplus-feranno-mini,ferplus-resnet-s --judge ferplus-vgg13s-judge [--threshold 0.5]

DATA is a synthetic dataset folder (``synfer generate``; each record's ``expression`` is its target). It is labelled
with ``synfer label`` (kept under ``--work``, resumable), then JUDGE, a classifier that is NOT among the annotators,
scores every face. Reported, overall and per target class:

* ``target_all``: how often the judge's prediction equals the target, over all faces (the raw labels);
* on the faces voting kept: how often it equals the voted label vs the target (same faces, a paired comparison);
* the vote's agree / relabel / drop rates.

Writes benchmarks/results/voting_helps.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import is_complete, machine_info, write_result

from synfer.classifiers.evaluate import predict
from synfer.core.assets import resolve
from synfer.core.dataset import DatasetFolder
from synfer.core.provenance import files_sha256
from synfer.core.splits import load_split
from synfer.labeling.label import annotator_sha256, label
from synfer.models.classifiers import ExpressionClassifier


def _rate(hit: np.ndarray) -> float | None:
    return round(100 * float(hit.mean()), 1) if hit.size else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="synthetic dataset folder (targets as expression)")
    ap.add_argument("--annotators", required=True, help="comma-separated FERAnno / classifier folders or names")
    ap.add_argument("--judge", required=True, help="a classifier that is not among the annotators")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--split", default="train", help="the split of DATA to label and judge (generate writes train)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench/voting"))
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "voting_helps.json")
    args = ap.parse_args()

    annotators = [a for a in args.annotators.split(",") if a]
    judge_hash = files_sha256(resolve("classifier", args.judge))
    if any(annotator_sha256(a) == judge_hash for a in annotators):
        raise SystemExit(f"The judge {args.judge} is one of the annotators; judge with a classifier that did not vote.")
    out = args.work / f"{args.data.name}-t{args.threshold}"
    done = is_complete(out)
    if not done:
        label(args.data, out, annotators, threshold=args.threshold, split=args.split, resume=out.exists())

    source = DatasetFolder(args.data)
    names = list(source.expressions)
    judge = ExpressionClassifier.from_pretrained(args.judge)
    data = load_split(args.data, args.split, expressions=names)
    judged = dict(zip(data.ids, predict(judge, data, torch.device("cpu")).argmax(-1), strict=True))
    targets = dict(zip(data.ids, data.labels.tolist(), strict=True))
    labelled = {r.id: r for r in DatasetFolder(out).records()}

    ids = list(targets)
    kept = [i for i in ids if i in labelled]
    t_all = np.array([targets[i] for i in ids])
    j_all = np.array([judged[i] for i in ids])
    t_kept = np.array([targets[i] for i in kept])
    j_kept = np.array([judged[i] for i in kept])
    v_kept = np.array([names.index(labelled[i].expression) for i in kept])
    status = np.array([labelled[i].meta["vote"] for i in kept])

    def block(mask_all: np.ndarray, mask_kept: np.ndarray) -> dict:
        return {"faces": int(mask_all.sum()), "kept": int(mask_kept.sum()),
                "target_all": _rate(j_all[mask_all] == t_all[mask_all]),
                "target_kept": _rate(j_kept[mask_kept] == t_kept[mask_kept]),
                "voted_kept": _rate(j_kept[mask_kept] == v_kept[mask_kept]),
                "relabelled": _rate(status[mask_kept] == "relabel")}

    per_class = {c: block(t_all == k, t_kept == k) for k, c in enumerate(names)}
    overall = block(np.ones_like(t_all, bool), np.ones_like(t_kept, bool))
    result = {
        "command": (f"python benchmarks/voting_helps.py --data {args.data} --annotators {args.annotators} "
                    f"--judge {args.judge}" + (f" --threshold {args.threshold}" if args.threshold is not None else "")),
        "machine": machine_info(args.note),
        "data": str(args.data), "labelled": str(out),
        "annotators": {a: annotator_sha256(a) for a in annotators},
        "judge": {"name": args.judge, "sha256": judge_hash, "architecture": judge.config.architecture},
        "threshold": args.threshold,
        "vote_summary": {k: v for k, v in DatasetFolder(out).header.stats.get("label", {}).items() if k != "per_class"},
        "judge_agreement_percent": {"all": overall, **per_class},
        "voting_helps": overall["voted_kept"] > overall["target_kept"],
    }
    write_result(args.out, result)
    print("class        judge == target (all)  on kept: target  voted   relabelled")
    for c, b in result["judge_agreement_percent"].items():
        print(f"{c:<12} {b['target_all']!s:>21} {b['target_kept']!s:>15} {b['voted_kept']!s:>7} {b['relabelled']!s:>11}")


if __name__ == "__main__":
    main()
