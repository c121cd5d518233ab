"""Benchmark: the distilled AU estimator against its teacher (MediaPipe fast path) on the FER+ test split.

    python benchmarks/au_distilled.py PREPARED [--model ferplus-au-distilled] [--split test]

PREPARED is FER+ after ``synfer prepare`` (its ``aus`` are the teacher's). Reports, over the faces where the teacher
saw a face, each AU's Pearson r and mean absolute difference, the mean r over the AUs that vary (teacher std >=
0.02), the face-presence r over all faces, and faces/s of ``estimate()`` on uint8 48x48 batches (best of 3, the
machine's default threads). Writes benchmarks/results/au_distilled.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import machine_info, write_result

from synfer.annotate.au.distill import au_agreement, pearson_per_column
from synfer.annotate.au.distilled import DistilledAUEstimator
from synfer.core.splits import load_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prepared", type=Path)
    ap.add_argument("--model", default=None, help="folder or bundled name (default: the bundled estimator)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "au_distilled.json")
    args = ap.parse_args()

    est = DistilledAUEstimator.from_pretrained(args.model, batch_size=args.batch_size)
    data = load_split(args.prepared, args.split, input_size=tuple(est.model.config.input_size), labelled=False,
                      need_aus=True)
    faces = data.images.permute(0, 2, 3, 1).numpy()
    faces = faces[..., 0] if faces.shape[-1] == 1 else faces
    est.estimate(faces[:256])  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        res = est.estimate(faces)
        times.append(time.perf_counter() - t0)
    has = data.has_aus.numpy()
    agree = au_agreement(res.aus[has], data.aus.numpy()[has], data.au_names)
    face_r = float(pearson_per_column(res.face_presence[:, None], data.face.numpy()[:, None])[0])
    write_result(args.out, {
        "benchmark": "au_distilled", "model": args.model or "bundled default", "data": str(args.prepared),
        "split": args.split, "faces": len(faces), "faces_with_teacher_aus": int(has.sum()),
        "mean_r_varying": round(agree["mean_r"], 4), "varying_aus": agree["varying"], "per_au": agree["per_au"],
        "face_presence_r": round(face_r, 4),
        "faces_per_s": round(len(faces) / min(times), 1), "seconds": [round(t, 3) for t in times],
        "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "selected_on": est.model.config.extra.get("selected_on"), "epoch": est.model.config.extra.get("epoch"),
        "machine": machine_info(args.note),
    })


if __name__ == "__main__":
    main()
