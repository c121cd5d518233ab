"""Benchmark: ``synfer prepare`` (fast MediaPipe path + template captions) on FER+ faces, extrapolated to all of
FER+.

    python benchmarks/prepare_ferplus.py --ferplus ../shared/data/ferplus \
        --model ../shared/data/mediapipe_face_landmarker/face_landmarker.task [--limit 1000] [--threads 1]

Imports the FER+ test split (majority labels) into a temporary folder, runs prepare on its first ``--limit``
records, and extrapolates the measured rate to the 31,373 majority-labelled records of all of FER+ (the number
`import-ferplus` writes). Writes benchmarks/results/prepare.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import machine_info, write_result

from synfer.annotate.prepare import prepare
from synfer.core.dataset import DatasetFolder
from synfer.importers.ferplus import import_ferplus

ALL_FERPLUS_RECORDS = 31373  # majority mode, all three splits (benchmarks/results/import_ferplus.json)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferplus", type=Path, default=Path("../shared/data/ferplus"))
    ap.add_argument("--model", type=Path,
                    default=Path("../shared/data/mediapipe_face_landmarker/face_landmarker.task"))
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="tflite interpreter threads")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prepare.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="synfer-bench-prepare-"))
    try:
        src = import_ferplus(args.ferplus, tmp / "src", splits=["test"])
        t0 = time.perf_counter()
        out = prepare(src, tmp / "out", au_model=args.model, limit=args.limit, batch_size=args.batch_size,
                      num_threads=args.threads)
        wall = time.perf_counter() - t0
        d = DatasetFolder(out)
        stats = d.header.stats["prepare"]
        n = len(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate = n / wall
    est_min = ALL_FERPLUS_RECORDS / rate / 60
    result = {
        "benchmark": f"synfer prepare, fast MediaPipe path + template captions, first {n} FER+ test records",
        "command": f"python benchmarks/prepare_ferplus.py --limit {args.limit} --threads {args.threads}",
        "records": n,
        "wall_s": round(wall, 2),
        "records_per_s": round(rate, 1),
        "time_s": stats["timing_s"],
        "records_with_aus": stats["records_with_aus"],
        "no_face": stats["no_face"],
        "extrapolated_all_ferplus_min": round(est_min, 1),
        "extrapolation": f"{ALL_FERPLUS_RECORDS} records / {rate:.1f} records/s, assuming the same rate for the "
                         "train and val splits (same kind of 48x48 crops); model load and parquet reading are "
                         "included in wall_s once, so a full run is slightly faster per record",
        "target_min": 15,
        "within_target": bool(est_min < 15),
        "threads": args.threads,
        "machine": machine_info("2-core machine shared with a background training job; rates are lower bounds"),
    }
    write_result(args.out, result)
    print(f"\n| prepare FER+ (fast MediaPipe + template captions), {n} records | {rate:.0f} records/s | all of "
          f"FER+ ~{est_min:.1f} min (extrapolated) | {args.threads} thread(s) |")


if __name__ == "__main__":
    main()
