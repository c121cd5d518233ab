"""What every benchmark script shares: the machine description, the atomic write of its result file, and whether a
resumable output folder is finished."""

from __future__ import annotations

import json
import os
import platform
import time
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
