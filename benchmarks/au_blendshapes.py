"""Benchmark: the fast MediaPipe path against the reference blendshapes of the whole FER+ test split.

    python benchmarks/au_blendshapes.py --ferplus ../shared/data/ferplus \
        --model ../shared/data/mediapipe_face_landmarker/face_landmarker.task [--threads 1] [--limit N]

Reads FER2013Test/*.png directly, runs MediaPipeAUEstimator(fast=True) and compares its 52 blendshapes and face
presence with ``reference_blendshapes.npz`` (mean absolute difference; acceptance: < 0.02). Also reports the AU
columns computed from both, and faces/s. Writes benchmarks/results/au_blendshapes.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import machine_info, write_result
from PIL import Image

from synfer.annotate.au import MEDIAPIPE_AUS_ALL, blendshapes_to_aus
from synfer.annotate.au.mediapipe_estimator import MediaPipeAUEstimator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferplus", type=Path, default=Path("../shared/data/ferplus"))
    ap.add_argument("--model", type=Path,
                    default=Path("../shared/data/mediapipe_face_landmarker/face_landmarker.task"))
    ap.add_argument("--threads", type=int, default=1, help="tflite interpreter threads")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="only the first N test images")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "au_blendshapes.json")
    args = ap.parse_args()

    ref = np.load(args.ferplus / "reference_blendshapes.npz", allow_pickle=False)
    row = {n: i for i, n in enumerate(ref["ferplus_name"].tolist())}
    names = sorted(p.name for p in (args.ferplus / "FER2013Test").glob("*.png"))[: args.limit]
    est = MediaPipeAUEstimator(args.model, fast=True, num_threads=args.threads)
    blend = np.zeros((len(names), 52), np.float32)
    presence = np.zeros(len(names), np.float32)
    t_decode = 0.0
    t0 = time.perf_counter()
    for start in range(0, len(names), args.batch_size):
        chunk = names[start:start + args.batch_size]
        t = time.perf_counter()
        images = []
        for n in chunk:
            with Image.open(args.ferplus / "FER2013Test" / n) as im:
                im.load()
                images.append(im)
        t_decode += time.perf_counter() - t
        r = est.estimate(images)
        blend[start:start + len(chunk)] = r.blendshapes
        presence[start:start + len(chunk)] = r.face_presence
    wall = time.perf_counter() - t0
    idx = [row[n] for n in names]
    ref_bs = ref["blendshapes"][idx].astype(np.float32)
    diff = np.abs(blend - ref_bs)
    au_diff = np.abs(blendshapes_to_aus(blend, MEDIAPIPE_AUS_ALL) - blendshapes_to_aus(ref_bs, MEDIAPIPE_AUS_ALL))
    result = {
        "benchmark": "fast MediaPipe path vs reference_blendshapes.npz, FER+ test split",
        "command": f"python benchmarks/au_blendshapes.py --threads {args.threads}"
                   + (f" --limit {args.limit}" if args.limit else ""),
        "images": len(names),
        "blendshape_mad": float(diff.mean()),
        "blendshape_max_abs_diff": float(diff.max()),
        "worst_blendshape_mad": float(diff.mean(axis=0).max()),
        "face_presence_mad": float(np.abs(presence - ref["face_presence"][idx].astype(np.float32)).mean()),
        "au_mad": float(au_diff.mean()),
        "acceptance_mad_below": 0.02,
        "passed": bool(diff.mean() < 0.02),
        "faces_per_s": round(len(names) / wall, 1),
        "wall_s": round(wall, 2),
        "time_s": {"decode": round(t_decode, 2), **{k: round(v, 2) for k, v in est.timings.items()}},
        "threads": args.threads,
        "machine": machine_info("2-core machine shared with a background training job; faces/s is a lower bound"),
    }
    write_result(args.out, result)
    print(f"\n| fast MediaPipe blendshapes, FER+ test ({len(names)} faces) | MAD {result['blendshape_mad']:.2e} "
          f"vs reference | {result['faces_per_s']} faces/s | {args.threads} thread(s) |")


if __name__ == "__main__":
    main()
