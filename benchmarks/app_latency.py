"""How fast `synfer app` answers: change an AU slider, generate 4 faces with the bundled generator at its default
sampler, get them back with the measured AUs and the judge's expression probabilities.

Two figures: the studio's action alone (``Studio.generate``: drawing, reading AUs back, the judge) and the full
round trip through the served page's API (``gradio_client`` -> server -> back, images encoded and fetched), each
the median of ``--rounds`` rounds after a warm-up, a different AU value every round (as a user moving a slider).

    python benchmarks/app_latency.py [--rounds 20] [--faces 4] [--seed 0] [--out benchmarks/results/app_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--faces", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/app_latency.json"))
    args = ap.parse_args()
    from synfer.app.studio import Studio

    work = Path(tempfile.mkdtemp(prefix="synfer-app-bench-"))
    studio = Studio("bundled", work / "direct")
    base = studio.presets("happiness")["class mean"]
    au12 = studio.au_names.index("AU12")

    def target(k: int) -> list[float]:
        values = list(base)
        values[au12] = (k % 11) / 10  # the slider moved to a new value every round
        return values

    studio.generate("happiness", target(0), n=args.faces, seed=args.seed)  # warm-up
    direct = []
    for k in range(args.rounds):
        t0 = time.perf_counter()
        studio.generate("happiness", target(k + 1), n=args.faces, seed=args.seed)
        direct.append(time.perf_counter() - t0)

    from synfer.app.serve import serve_in_background

    proc, url = serve_in_background(work / "app")
    try:
        from gradio_client import Client

        client = Client(url, verbose=False, analytics_enabled=False, download_files=str(work / "downloads"))
        defaults = studio.defaults
        settings = [args.seed, args.faces, int(defaults["num_inference_steps"]), defaults["guidance_scale_text"],
                    defaults["guidance_scale_au"], 0.0]
        client.predict("happiness", "", False, *settings, *target(0), api_name="/generate")  # warm-up
        served = []
        for k in range(args.rounds):
            t0 = time.perf_counter()
            client.predict("happiness", "", False, *settings, *target(k + 1), api_name="/generate")
            served.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "benchmark": f"synfer app: AU12 slider moved, {args.faces} faces of the bundled generator at its default "
                     "sampler, read back by the AU estimator and the judge",
        "command": f"python benchmarks/app_latency.py --rounds {args.rounds} --faces {args.faces} --seed {args.seed}",
        "sampler": studio.defaults,
        "studio_seconds": {"median": round(statistics.median(direct), 3), "min": round(min(direct), 3),
                           "max": round(max(direct), 3)},
        "served_seconds": {"median": round(statistics.median(served), 3), "min": round(min(served), 3),
                           "max": round(max(served), 3)},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "precision": "auto"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
