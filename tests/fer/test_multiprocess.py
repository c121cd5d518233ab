"""Training on 2 CPU processes (torchrun, gloo) is the same run as on one: the global batch is shared out, the
gradients averaged, every process starts from the main one's weights; a run resumes across process counts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import torchrun, write_pattern_dataset
from synfer.classifiers.train import train_fer
from synfer.core.dataset import FolderLock
from synfer.core.options import call

#: A model without batch statistics (LayerNorm, no dropout) and a recipe without augmentation: its loss is a
#: function of the batch alone, so one and two processes must agree up to float rounding.
RECIPE = {"architecture": "vit_tiny_patch16_224", "augment": "none", "batch_size": 16, "lr": 0.05,
          "warmup_epochs": 0.0, "seed": 0, "precision": "fp32",
          "model_kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}}


def flags(recipe: dict) -> list[str]:
    out = []
    for k, v in recipe.items():
        out += [f"--{k.replace('_', '-')}", json.dumps(v) if isinstance(v, dict) else str(v)]
    return out


def max_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


@pytest.mark.slow  # 13 s of torchrun start-up; the default run keeps the sharded-generation torchrun test
def test_two_processes_train_the_same_classifier_as_one(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "patterns")
    one = call(train_fer, [data], tmp_path / "one", **RECIPE, epochs=2)
    torchrun(["train-fer", str(data), str(tmp_path / "two"), *flags(RECIPE), "--epochs", "2"])
    two = tmp_path / "two"
    rows = {n: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()] for n, p in
            (("one", one), ("two", two))}
    assert [r["step"] for r in rows["one"]] == [r["step"] for r in rows["two"]]  # the same optimiser steps
    assert json.loads((two / "train_config.json").read_text())["processes"] == 2
    assert max_difference(one, two) < 1e-4  # gradients of two half batches, averaged = the full batch's
    assert abs(rows["one"][-1]["val_accuracy"] - rows["two"][-1]["val_accuracy"]) < 1e-6


STOP_AFTER_TWO_EPOCHS = """
import os, sys
import synfer.core.training as training
real, saved = training.save_state, []
def stop(path, state):  # the job dies right after its second saved epoch, as a killed one would
    real(path, state)
    saved.append(path)
    if len(saved) == 2:
        os._exit(3)
    return path
training.save_state = stop
from synfer.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_run_resumes_across_process_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after 2 of 3 epochs on one process and finished on two, or the reverse: both equal the 3 epochs
    run straight on one process."""
    from conftest import stopped_after_saves

    data = write_pattern_dataset(tmp_path / "patterns")
    straight = call(train_fer, [data], tmp_path / "straight", **RECIPE, epochs=3)
    with stopped_after_saves(monkeypatch, saves=2):  # one process, stopped; two finish it
        call(train_fer, [data], tmp_path / "one-then-two", **RECIPE, epochs=3)
    FolderLock(tmp_path / "one-then-two").release()  # a killed job's lock dies with it; this process lives on
    torchrun(["train-fer", str(data), str(tmp_path / "one-then-two"), *flags(RECIPE), "--epochs", "3", "--resume"])
    script = tmp_path / "stop_after_two.py"  # two processes, stopped; one finishes it
    script.write_text(STOP_AFTER_TWO_EPOCHS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    killed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             port, str(script), "train-fer", str(data), str(tmp_path / "two-then-one"),
                             *flags(RECIPE), "--epochs", "3"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0 and (tmp_path / "two-then-one" / "state").is_dir()
    call(train_fer, [data], tmp_path / "two-then-one", **RECIPE, epochs=3, resume=True)
    for run in ("one-then-two", "two-then-one"):
        steps = [json.loads(x)["step"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [json.loads(x)["step"] for x in (straight / "metrics.jsonl").read_text().splitlines()], run
        assert max_difference(straight, tmp_path / run) < 1e-4, run
