"""SDXL at full size (random weights): ``benchmarks/sdxl_simulation.py`` run as a slow test. A checkpoint written by
diffusers' StableDiffusionXLPipeline loads through ``from_stable_diffusion`` with both text encoders, the AU
adapter goes into all 70 cross-attention layers and comes out exactly, the UNet runs one 512 px forward, and
``train-adapter`` takes two optimiser steps (about 15 minutes on 2 cores, 30 GB of disk, see docs/scale.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


@pytest.mark.slow
@pytest.mark.timeout(5400)  # longer than the default run's per-test limit
def test_sdxl_unet_forward_and_an_adapter_training_step(tmp_path: Path) -> None:
    if memory_gb() < 20:
        pytest.skip("needs 20 GB of memory (SDXL's UNet alone is 10.3 GB in fp32)")
    if shutil.disk_usage(tmp_path).free < 40 * 2**30:
        pytest.skip("needs 40 GB of free disk (the checkpoint and the synfer pipeline, 14 GB each)")
    out, work = tmp_path / "result.json", tmp_path / "work"
    try:
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sdxl_simulation.py"), "--work", str(work),
                              "--stages", "build,forward,train-adapter", "--precision", "bf16", "--out", str(out)],
                             capture_output=True, text=True, timeout=5400)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # 30 GB: not left for pytest's kept temporary folders
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["stage"]: r for r in json.loads(out.read_text())["stages"]}
    failed = {s: r.get("error") for s, r in rows.items() if not r.get("ok")}
    assert not failed, failed
    assert rows["build"]["parameters"]["unet"] == 2_567_463_684  # SDXL-base's UNet, to the parameter
    assert rows["build"]["parameters"]["text_encoder_2"] == 694_659_840
    forward = rows["forward"]
    assert forward["family"] == "SDXL" and forward["text_encoder"] == "SDXLTextEncoder"
    assert forward["condition"] == [1, 1 + 77 + 4, 2048]  # pooled token, both encoders' tokens, 4 AU tokens
    assert forward["au_layers"] == 70 and forward["restored_exactly"]
    assert forward["prediction"] == [1, 4, 64, 64] and forward["finite"]
    assert rows["train-adapter"]["steps"] == 2 and rows["train-adapter"]["exit"] == 0
