"""Report a finished `synfer train-fer` run: wall time, training throughput, validation and FER+ test accuracy.

    python benchmarks/fer_classifier.py RUN_DIR --val-data runs/ferplus --test-data runs/ferplus \
        [--name bundled-ferplus-resnet-s]

The model was selected on the validation split during training; the test split is scored here once, for the
record. Writes benchmarks/results/fer_classifier-<name>.json and the evaluation folders (metrics, confusion
matrix PNG) under benchmarks/results/<name>/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import machine_info, write_result

from synfer.classifiers.evaluate import evaluate
from synfer.core.splits import load_split
from synfer.models.classifiers import ExpressionClassifier


def inference_speed(model: ExpressionClassifier, images: torch.Tensor, batch_size: int = 256) -> float:
    """Faces per second, CPU, batch ``batch_size`` (after one warm-up batch)."""
    model.eval()
    x = images[:batch_size].float() / 255.0
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 5.0:
            model(x)
            n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--val-data", type=Path, required=True)
    ap.add_argument("--test-data", type=Path, required=True)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    name = args.name or args.run.name
    results_dir = Path(__file__).parent / "results"
    rows = [json.loads(x) for x in (args.run / "metrics.jsonl").read_text().splitlines()]
    train_cfg = json.loads((args.run / "train_config.json").read_text())
    model_cfg = json.loads((args.run / "config.json").read_text())
    evals = {}
    for split, data in (("val", args.val_data), ("test", args.test_data)):
        for tta in (False, True):
            key = f"{split}{'_tta' if tta else ''}"
            evaluate(str(args.run), data, split=split, tta=tta, out=results_dir / name / key)
            evals[key] = json.loads((results_dir / name / key / "metrics.json").read_text())
    clf = ExpressionClassifier.from_pretrained(args.run)
    test_images = load_split(args.test_data, "test", expressions=clf.label_names).images
    cfg = train_cfg["config"]
    result = {
        "run": str(args.run),
        "command": "synfer train-fer " + " ".join(cfg["train"]) + f" OUT --val {cfg['val']} --architecture "
                   f"{cfg['architecture']} --model-kwargs '{json.dumps(cfg['model_kwargs'])}' --epochs "
                   f"{cfg['epochs']} --batch-size {cfg['batch_size']} --lr {cfg['lr']} --ema-decay "
                   f"{cfg['ema_decay']} --labels {cfg['labels']} --seed {cfg['seed']}",
        "seed": cfg["seed"],
        "parameters": sum(p.numel() for p in clf.parameters()),
        "weights_mb": round((args.run / "model.safetensors").stat().st_size / 2**20, 2),
        "epochs_run": len(rows),
        "best_epoch": model_cfg["extra"].get("epoch"),
        "wall_time_min": round(sum(r["epoch_s"] for r in rows) / 60, 1),
        "train_images_per_s_median": round(statistics.median(r["images_per_s"] for r in rows), 1),
        "inference_faces_per_s": round(inference_speed(clf, test_images), 1),
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "val_accuracy": evals["val"]["accuracy"],
        "test_accuracy": evals["test"]["accuracy"],
        "test_accuracy_tta": evals["test_tta"]["accuracy"],
        "test_macro_f1": evals["test"]["macro_f1"],
        "test_per_class_recall": {k: v["recall"] for k, v in evals["test"]["per_class"].items()},
        "test_confusion_matrix": evals["test"]["confusion_matrix"],
        "labels": evals["test"]["labels"],
        "machine": machine_info(),
    }
    write_result(results_dir / f"fer_classifier-{name}.json", result)


if __name__ == "__main__":
    main()
