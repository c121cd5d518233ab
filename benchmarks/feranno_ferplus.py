"""Benchmark: FERAnno standalone on the FER+ official test split, next to the bundled classifier and the linear probe.

    python benchmarks/feranno_ferplus.py --feranno RUN [--probe PROBE_RUN] [--real runs/ferplus]

RUN / PROBE_RUN: ``synfer train-annotator`` outputs (kind feranno / probe), each chosen on FER+ validation. Every
model is scored once on the test split (official majority labels): accuracy, macro-F1, per-class recall.
Writes benchmarks/results/feranno_ferplus.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import machine_info, write_result
from tqdm.auto import tqdm

from synfer.core.assets import resolve
from synfer.core.dataset import DatasetFolder
from synfer.core.metrics import classification_metrics
from synfer.labeling.annotators import load_annotator
from synfer.models.classifiers import DEFAULT_CLASSIFIER


def score(spec: str, real: Path, split: str, batch: int) -> dict:
    folder = DatasetFolder(real)
    names = list(folder.expressions)
    recs = [r for r in folder.records(split) if r.expression is not None]
    model = load_annotator(spec)
    probs = []
    for i in tqdm(range(0, len(recs), batch), desc=str(spec), unit="batch"):
        probs.append(model([folder.load_image(r.image) for r in recs[i:i + batch]]).numpy())
    pred = np.concatenate(probs).argmax(-1)
    truth = np.array([names.index(r.expression) for r in recs])
    m = classification_metrics(truth, pred, names)
    return {"accuracy": round(100 * m["accuracy"], 2), "macro_f1": round(100 * m["macro_f1"], 2),
            "recall": {n: round(100 * float((pred[truth == k] == k).mean()), 1) for k, n in enumerate(names)},
            "faces": len(recs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feranno", required=True)
    ap.add_argument("--probe", default=None)
    ap.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
    ap.add_argument("--real", type=Path, default=Path("runs/ferplus"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "feranno_ferplus.json")
    args = ap.parse_args()
    models = {"feranno": args.feranno, "classifier": args.classifier}
    if args.probe:
        models["probe"] = args.probe
    results = {}
    for name, spec in models.items():
        results[name] = {"model": str(spec), **score(spec, args.real, args.split, args.batch)}
        cfg = (resolve("classifier", spec) if name == "classifier" else resolve("annotator", spec)) / "config.json"
        if cfg.is_file():
            results[name]["chosen_on_val"] = json.loads(cfg.read_text()).get("extra", {})
    write_result(args.out, {"command": "python benchmarks/feranno_ferplus.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "machine": machine_info(), "split": args.split, "results": results})


if __name__ == "__main__":
    main()
