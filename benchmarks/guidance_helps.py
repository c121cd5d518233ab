"""Benchmark: does semantic guidance make generated faces show their target expression more often?

    python benchmarks/guidance_helps.py --judge JUDGE --real runs/ferplus [--per-class 200] [--seed 0]
        [--scale 0.1] [--window 0.7 0.9] [--au-guidance 0] [--work runs/bench/guidance]

Two sets are generated with ``synfer generate`` from the same plan (same prompts, target AUs and seeds; bundled
generator at its defaults): without and with semantic guidance by the bundled classifier. Both are judged by
JUDGE, a classifier that is NOT the guidance model (``synfer evaluate`` refuses that too): the share of faces per
class whose predicted expression is the target, next to the judge's recall on the real FER+ validation faces of
that class. The guidance model's own recognition rates are reported as well (what guidance optimises; use them, on
a pilot set with another seed, to choose the guidance settings, never the judge's).

The sets are kept under ``--work`` (resumable); writes benchmarks/results/guidance_helps.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import is_complete, machine_info, write_result

from synfer.classifiers.evaluate import predict
from synfer.core.assets import resolve
from synfer.core.provenance import files_sha256, refuse_judge
from synfer.core.splits import load_split
from synfer.models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier
from synfer.schema import FERPLUS8
from synfer.synthesize.generate import generate


def per_class_match(model: ExpressionClassifier, folder: Path, names: list[str]) -> dict[str, float]:
    """Share (%) of each class's faces that ``model`` assigns to that class."""
    data = load_split(folder, "train", expressions=names)
    pred = predict(model, data, torch.device("cpu")).argmax(-1)
    labels = data.labels.numpy()
    out = {c: round(100 * float((pred[labels == k] == k).mean()), 1) for k, c in enumerate(names)}
    out["all"] = round(100 * float((pred == labels).mean()), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", default=None, help="classifier folder that did not guide (e.g. another backbone); "
                    "without it, a pilot: only the guidance model's own rates (to choose settings)")
    ap.add_argument("--real", type=Path, default=Path("runs/ferplus"), help="FER+ folder (its val split)")
    ap.add_argument("--pipeline", default="bundled")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--window", type=float, nargs=2, default=(0.7, 0.9))
    ap.add_argument("--au-guidance", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/guidance"))
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "guidance_helps.json")
    args = ap.parse_args()

    names = list(FERPLUS8.names)
    if args.judge is not None and (files_sha256(resolve("classifier", args.judge))
                                   == files_sha256(resolve("classifier", DEFAULT_CLASSIFIER))):
        raise SystemExit(f"{args.judge} is the guidance model; judge with an independent classifier.")
    common = dict(pipeline=args.pipeline, per_class=args.per_class, seed=args.seed, batch_size=args.batch_size,
                  au_source="auto", preview=True)
    sets, seconds = {}, {}
    tag = f"s{args.seed}-n{args.per_class}"
    guided_tag = f"{tag}-l{args.scale}-w{args.window[0]}-{args.window[1]}-au{args.au_guidance}"
    for name, kw, folder in (
        ("unguided", {}, args.work / f"unguided-{tag}"),
        ("guided", {"semantic_guidance": args.scale, "guidance_window": tuple(args.window),
                    "au_guidance": args.au_guidance}, args.work / f"guided-{guided_tag}"),
    ):
        t0 = time.perf_counter()
        done = is_complete(folder)
        if not done:
            generate(folder, **common, **kw, resume=folder.exists())
        seconds[name] = round(time.perf_counter() - t0, 1) if not done else None
        sets[name] = folder
    guide = ExpressionClassifier.from_pretrained(DEFAULT_CLASSIFIER)
    own = {name: per_class_match(guide, folder, names) for name, folder in sets.items()}
    if args.judge is None:
        print("pilot (guidance model's own rates)", {k: v["all"] for k, v in own.items()}, own)
        return
    refuse_judge(sets["guided"], args.judge)
    judge_path = resolve("classifier", args.judge)
    judge = ExpressionClassifier.from_pretrained(args.judge)
    val = load_split(args.real, "val", expressions=names)
    val_pred = predict(judge, val, torch.device("cpu")).argmax(-1)
    labels = val.labels.numpy()
    real = {c: round(100 * float((val_pred[labels == k] == k).mean()), 1) for k, c in enumerate(names)}
    real["all"] = round(100 * float((val_pred == labels).mean()), 1)
    judged = {name: per_class_match(judge, folder, names) for name, folder in sets.items()}
    helped = [c for c in names if judged["guided"][c] > judged["unguided"][c]]
    result = {
        "command": (f"python benchmarks/guidance_helps.py --judge {args.judge} --real {args.real} "
                    f"--per-class {args.per_class} --seed {args.seed} --scale {args.scale} "
                    f"--window {args.window[0]} {args.window[1]} --au-guidance {args.au_guidance}"),
        "machine": machine_info(args.note),
        "judge": {"path": str(args.judge), "sha256": files_sha256(judge_path),
                  "architecture": judge.config.architecture, "real_val_recall": real},
        "guidance_model": DEFAULT_CLASSIFIER,
        "faces_per_class": args.per_class, "seed": args.seed,
        "guidance": {"scale": args.scale, "window": list(args.window), "au_guidance": args.au_guidance},
        "judge_match_percent": judged,
        "guidance_model_match_percent": own,
        "classes_where_guidance_helps": helped,
        "helps_overall": judged["guided"]["all"] > judged["unguided"]["all"],
        "generation_seconds": seconds,
        "sets": {k: str(v) for k, v in sets.items()},
    }
    write_result(args.out, result)
    print("class        judge: unguided  guided   (judge on real val)")
    for c in [*names, "all"]:
        print(f"{c:<12} {judged['unguided'][c]:>15.1f} {judged['guided'][c]:>7.1f}   ({real[c]:.1f})")


if __name__ == "__main__":
    main()
