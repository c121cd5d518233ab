"""Benchmark: expression-classifier training and evaluation in bf16 against fp32 (speed and accuracy).

    python benchmarks/fer_precision.py --train runs/ferplus_ce --val runs/ferplus [--epochs 10] [--seed 0]

The bundled classifier's recipe (``fer_resnet_s``, stem stride 2, batch 128, SGD lr 0.1, EMA 0.999, soft labels)
is trained twice from the same seed, ``--epochs`` epochs each, once with ``--precision fp32`` and once with
``bf16``; reported: training images/s (median over epochs, the whole loop: augmentation, steps, EMA), the best
validation accuracy (model selection on val) and that model's test accuracy (read once), and evaluation faces/s
of the bf16 model in each precision with the share of test predictions that agree.
The speed ratio is also measured apart from the runs, in interleaved rounds (``--rounds``, ``--steps`` training
steps of the recipe's model and batch in each precision per round; the median of the rounds' ratios), so that other
load on the machine hits both precisions alike.
Writes benchmarks/results/fer_precision.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine_info, write_result

from synfer.classifiers.evaluate import predict
from synfer.classifiers.train import train_fer
from synfer.core.metrics import classification_metrics
from synfer.core.options import bind
from synfer.core.runtime import autocast
from synfer.core.splits import load_split
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier
from synfer.schema import FERPLUS8

RECIPE = {"architecture": "fer_resnet_s", "model_kwargs": {"stem_stride": 2}, "batch_size": 128, "lr": 0.1,
          "ema_decay": 0.999}


def interleaved_steps(rounds: int, steps: int, seed: int) -> dict[str, Any]:
    """Training steps/s of the recipe's model (forward, soft-label loss in fp32, backward, SGD) at batch 128 on
    random 48x48 faces, fp32 and bf16 alternating; median images/s and the median per-round speed-up of bf16."""
    torch.manual_seed(seed)
    config = ClassifierConfig(RECIPE["architecture"], list(FERPLUS8.names), (1, 48, 48), mean=(0.5,), std=(0.25,),
                              model_kwargs=RECIPE["model_kwargs"])
    model = ExpressionClassifier(config).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.rand(RECIPE["batch_size"], 1, 48, 48)
    target = torch.softmax(torch.randn(RECIPE["batch_size"], len(FERPLUS8.names)), 1)
    device = torch.device("cpu")

    def run(precision: str, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            with autocast(device, precision):
                logits = model(x)
            loss = torch.sum(-target * torch.log_softmax(logits.float(), 1), 1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return n * RECIPE["batch_size"] / (time.perf_counter() - t0)

    run("fp32", 3), run("bf16", 3)  # warm-up
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for precision in rates:
            rates[precision].append(run(precision, steps))
    ratios = [b / f for f, b in zip(rates["fp32"], rates["bf16"], strict=True)]
    return {"images_per_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
            "speedup_bf16": round(statistics.median(ratios), 3),
            "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)], "rounds": rounds, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=Path("runs/ferplus_ce"))
    ap.add_argument("--val", type=Path, default=Path("runs/ferplus"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/fer_precision"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fer_precision.json")
    args = ap.parse_args()

    steps = interleaved_steps(args.rounds, args.steps, args.seed)
    print("interleaved", steps, flush=True)
    test = None
    runs = {}
    for precision in ("fp32", "bf16"):
        out = args.work / precision
        train_fer([args.train], out, **bind(train_fer, {**RECIPE, "val": args.val, "epochs": args.epochs,
                                                        "seed": args.seed, "precision": precision,
                                                        "resume": out.exists()}))
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        model = ExpressionClassifier.from_pretrained(out)
        test = test or load_split(args.val, "test", expressions=model.label_names)
        pred = predict(model, test, torch.device("cpu")).argmax(1)
        m = classification_metrics(test.labels.numpy(), pred, model.label_names)
        runs[precision] = {"train_images_per_s": round(statistics.median(r["images_per_s"] for r in rows), 1),
                           "best_val_accuracy": round(100 * max(r["val_accuracy"] for r in rows), 2),
                           "test_accuracy": round(100 * m["accuracy"], 2), "epochs": len(rows)}
        print(precision, runs[precision], flush=True)
    model = ExpressionClassifier.from_pretrained(args.work / "bf16")
    evals = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # alternating; the second of each counts
        t0 = time.perf_counter()
        probs = predict(model, test, torch.device("cpu"), precision=precision)
        evals[precision] = (len(test) / (time.perf_counter() - t0), probs.argmax(1))
    agree = float((evals["fp32"][1] == evals["bf16"][1]).mean())
    write_result(args.out, {
        "benchmark": "fer_precision", "train": str(args.train), "val_test": str(args.val), "recipe": RECIPE,
        "epochs": args.epochs, "seed": args.seed, "runs": runs,
        "train_speedup_bf16": round(runs["bf16"]["train_images_per_s"] / runs["fp32"]["train_images_per_s"], 2),
        "interleaved_steps": steps,
        "evaluation": {"faces_per_s": {k: round(v[0], 1) for k, v in evals.items()},
                       "bf16_fp32_prediction_agreement": round(agree, 4)},
        "command": f"python benchmarks/fer_precision.py --train {args.train} --val {args.val} --epochs {args.epochs} "
                   f"--seed {args.seed} --rounds {args.rounds} --steps {args.steps}",
        "torch_threads": torch.get_num_threads(), "machine": machine_info(),
    })


if __name__ == "__main__":
    main()
