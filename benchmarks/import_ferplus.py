"""Benchmark: import all of FER+ (majority mode) into a dataset folder, and read it back.

    python benchmarks/import_ferplus.py --ferplus ../shared/data/ferplus [--repeats 3]

Writes benchmarks/results/import_ferplus.json (wall times, images/s, machine) and prints a Markdown row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import machine_info, write_result

from synfer.core.dataset import DatasetFolder
from synfer.importers.ferplus import import_ferplus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferplus", type=Path, default=Path("../shared/data/ferplus"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "import_ferplus.json")
    args = ap.parse_args()
    runs = []
    for _ in range(args.repeats):
        tmp = Path(tempfile.mkdtemp(prefix="synfer-bench-"))
        try:
            t0 = time.perf_counter()
            out = import_ferplus(args.ferplus, tmp / "ferplus")
            t_import = time.perf_counter() - t0
            t0 = time.perf_counter()
            d = DatasetFolder(out)
            df = d.to_pandas()
            t_read = time.perf_counter() - t0
            runs.append({"import_s": round(t_import, 2), "read_to_pandas_s": round(t_read, 2), "records": len(df)})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    best = min(r["import_s"] for r in runs)
    result = {
        "benchmark": "import-ferplus, majority mode, all splits (28,558 + 3,579 + 3,573 source images)",
        "command": f"python benchmarks/import_ferplus.py --ferplus {args.ferplus} --repeats {args.repeats}",
        "runs": runs,
        "best_import_s": best,
        "images_per_s": round(35710 / best),
        "machine": machine_info(),
    }
    write_result(args.out, result)
    print(f"\n| import all of FER+ | {best:.1f} s | {result['images_per_s']} source images/s | "
          f"{os.cpu_count()} CPUs |")


if __name__ == "__main__":
    main()
