"""The bundled mini generator loads offline by name, carries its sampler defaults and AU targets, and draws
48x48 gray faces for every FER+ expression (behaviour; its quality is measured in benchmarks/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synfer.diffusion.pipeline import DEFAULT_GENERATOR, bundled_generators_dir, load_pipeline
from synfer.diffusion.sample import AU_TARGETS_FILE
from synfer.schema import FERPLUS8


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_bundled_generator_draws_faces() -> None:
    folder = bundled_generators_dir() / DEFAULT_GENERATOR
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert sum(p.stat().st_size for p in files) < 60e6
    pipe = load_pipeline("bundled")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.generation_defaults()["num_inference_steps"] <= 25
    targets = json.loads((folder / AU_TARGETS_FILE).read_text())
    assert targets["au_names"] == list(pipe.au_adapter.au_names)
    assert set(FERPLUS8.names) <= set(targets["per_expression"])
    aus = torch.tensor([targets["per_expression"][e] for e in FERPLUS8.names])
    prompts = [f"A close-up photo of a person with a {e} expression." for e in FERPLUS8.names]
    images = pipe(prompts, aus=aus, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (8, 48, 48, 1) and np.isfinite(images).all()
    assert images.std() > 0.05  # faces, not a flat image
