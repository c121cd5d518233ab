"""What every benchmark script shares: the machine description, the atomic write of its result file, whether a
resumable output folder is finished, and the process-per-stage harness of the full-size simulations."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def machine_info(note: str | None = None) -> dict[str, Any]:
    """CPU count, platform, Python, the date, and an optional note (e.g. a shared machine)."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    if note:
        info["note"] = note
    return info


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's JSON result (temp name, then rename) and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(json.dumps(result, indent=2))


def is_complete(folder: Path) -> bool:
    """True when ``folder`` is a dataset folder whose writer finished (its header says ``complete``)."""
    from synfer.core.dataset import HEADER_FILE, read_header

    return (Path(folder) / HEADER_FILE).is_file() and read_header(folder).complete


def run_stages(script: str, description: str, stages: tuple[str, ...],
               run_stage: Callable[[str, Path, str], dict[str, Any]], default_out: Path) -> None:
    """The command line of a staged simulation (``--work``, ``--stages``, ``--precision``, ``--out``): each stage
    and precision runs in its own process (``script --child STAGE PRECISION``), so its peak memory is its own;
    a failing stage is recorded with its error and does not hide the others. ``build`` runs once, in fp32."""
    import argparse
    import subprocess
    import sys

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--stages", default="all")
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.work, args.child[1], run_stage)
        return
    chosen = stages if args.stages == "all" else tuple(args.stages.split(","))
    unknown = sorted(set(chosen) - set(stages))
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; stages: {', '.join(stages)}")
    rows = []
    for stage in chosen:
        for precision in (["fp32"] if stage == "build" else args.precision.split(",")):
            run = subprocess.run([sys.executable, script, "--work", str(args.work), "--child", stage, precision],
                                 capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            found = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
            row = json.loads(found[-1][7:]) if found else {"stage": stage, "precision": precision, "ok": False,
                                                            "error": f"exit {run.returncode}: {run.stderr[-1000:]}"}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
    result = {"benchmark": description.strip().splitlines()[0],
              "command": f"python benchmarks/{Path(script).name} --work WORK --stages {args.stages} "
                         f"--precision {args.precision}",
              "machine": {"cores": os.cpu_count()}, "stages": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def _child(stage: str, work: Path, precision: str, run_stage: Callable[[str, Path, str], dict[str, Any]]) -> None:
    import resource
    import traceback

    t0 = time.perf_counter()
    row: dict[str, Any] = {"stage": stage, "precision": precision}
    try:
        row.update(run_stage(stage, work, precision), ok=True)
    except Exception as e:  # recorded, so one failing stage does not hide the others
        row.update(ok=False, error=f"{type(e).__name__}: {' '.join(str(e).split())[:500]}",
                   traceback=traceback.format_exc()[-2000:])
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print("RESULT " + json.dumps(row), flush=True)


def cli_epoch(args: list[str], run: Path) -> dict[str, Any]:
    """Run a synfer training verb (``args``, writing to the run folder ``run``) in this process; its exit code and
    the last ``metrics.jsonl`` line's step, training loss and epoch seconds."""
    from synfer.cli import main

    code = main(args)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {"exit": code, "steps": rows[-1]["step"], "train_loss": rows[-1]["train_loss"],
            "epoch_seconds": rows[-1]["epoch_s"]}


def simulation_faces(folder: Path, caption: str, size: int = 512) -> Path:
    """The full-size simulations' dataset: 2 training and 1 validation face of random 512 px RGB noise (seed 0),
    captioned, with random intensities of the bundled generator's 22 AUs."""
    import numpy as np
    from PIL import Image

    from synfer.core.dataset import DatasetWriter, Record
    from synfer.generator.pipeline import load_pipeline
    from synfer.schema import AUSet

    names = load_pipeline("bundled").au_adapter.au_names
    rng = np.random.default_rng(0)
    with DatasetWriter(folder, ("happiness", "sadness"), aus=AUSet(tuple(names))) as w:
        for split, n in (("train", 2), ("val", 1)):
            for i in range(n):
                w.add(Record(f"{split}-{i}", split, "simulation", ("happiness", "sadness")[i % 2],
                             aus=rng.uniform(0, 1, len(names)).round(3).tolist(), caption=caption),
                      Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
    return folder
