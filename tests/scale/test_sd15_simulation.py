"""Stable Diffusion 1.5 at full size (random weights) through every synfer stage that fits a 24 GB CPU machine:
``benchmarks/sd15_simulation.py`` run as a slow test, each stage in its own process (about 20 minutes on 2 cores,
16.3 GB at most: the full fine-tune runs without EMA and with gradient checkpointing, see docs/scale.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["build", "adapter", "sample", "guidance", "invert", "feranno", "label", "train-generator",
          "train-generator-lora", "train-adapter"]


def memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


@pytest.mark.slow
@pytest.mark.timeout(3600)  # longer than the default run's per-test limit
def test_sd15_shaped_components_go_through_every_stage(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    if memory_gb() < 20:
        pytest.skip("needs 20 GB of memory (the full fine-tune peaks at 16.3 GB)")

    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sd15_simulation.py"), "--work", str(tmp_path),
                          "--stages", ",".join(STAGES), "--precision", "fp32", "--out", str(out)],
                         capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["stage"]: r for r in json.loads(out.read_text())["stages"]}
    failed = {s: r.get("error") for s, r in rows.items() if not r.get("ok")}
    assert not failed, failed
    assert rows["build"]["parameters"]["unet"] == 859_520_964  # SD-1.5's UNet, to the parameter
    assert rows["adapter"]["au_layers"] == 16 and rows["adapter"]["restored_exactly"]
    assert rows["sample"]["shape"] == [1, 3, 512, 512] and rows["sample"]["finite"]
    assert rows["guidance"]["finite"] and rows["invert"]["latents"] == [1, 4, 64, 64]
    assert [f[2] for f in rows["feranno"]["features"]] == [16, 32, 64, 64] and rows["feranno"]["attention_maps"] == 16
    assert rows["label"]["exit"] == 0 and rows["label"]["labelled"] == 2  # FERAnno on the full-size UNet votes
    assert set(rows["label"]["labels"]) <= {"happiness", "sadness"}
    assert all(rows[s]["steps"] == 2 for s in ("train-generator", "train-generator-lora", "train-adapter"))
