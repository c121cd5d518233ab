"""On a CUDA device (``pytest -m gpu``; skipped without one): the bundled generator samples in every precision
``auto`` can pick there and matches its fp32 faces closely, and a classifier trains and evaluates in bf16 autocast
on the GPU as on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_pattern_dataset
from synfer.classifiers.evaluate import evaluate
from synfer.classifiers.train import train_fer
from synfer.core.options import call
from synfer.core.runtime import resolve_precision
from synfer.generator.pipeline import load_generator

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.usefixtures("hub_offline")]

PROMPTS = [f"A close-up photo of a person with a {e} expression." for e in ("happy", "surprised", "sad", "angry")]


def test_bundled_generator_samples_on_the_gpu_in_low_precision() -> None:
    pipe, _ = load_generator("bundled", "cuda")
    aus = torch.rand(len(PROMPTS), len(pipe.au_adapter.au_names), generator=torch.Generator().manual_seed(0))

    def faces(precision: str) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
        return pipe(PROMPTS, aus=aus, generator=gens, output_type="pt", precision=precision).images.float().cpu()

    full = faces("fp32")
    assert resolve_precision("auto", torch.device("cuda")) in ("bf16", "fp16")
    for precision in ("auto", "fp16", "bf16") if torch.cuda.is_bf16_supported() else ("auto", "fp16"):
        low = faces(precision)
        assert torch.isfinite(low).all()
        assert (low - full).abs().mean() < 0.05, precision  # the same faces, up to rounding along the trajectory


def test_classifier_trains_and_evaluates_on_the_gpu(tmp_path: Path) -> None:
    data = write_pattern_dataset(tmp_path / "patterns")
    out = call(train_fer, [data], tmp_path / "fer", epochs=6, augment="none", architecture="fer_resnet_xs",
                    model_kwargs={"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1]}, batch_size=16, lr=0.05,
                    warmup_epochs=0.5, precision="auto")  # accelerate takes the GPU
    evaluate(str(out), data, split="test", out=tmp_path / "eval", device="cuda")
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["accuracy"] >= 0.9
    config = json.loads((out / "train_config.json").read_text())
    assert config["processes"] >= 1 and config["config"]["precision"] in ("bf16", "fp16")


def test_sdxl_vae_flagged_force_upcast_decodes_in_fp32_under_fp16(tmp_path: Path) -> None:
    """SDXL's VAE overflows in fp16 and says so (``force_upcast``): under fp16 the pipeline decodes it in fp32,
    and leaves its weights' dtype as it found them."""
    from diffusers import AutoencoderKL, DDIMScheduler

    from conftest import tiny_sdxl_parts, tiny_vae_unet
    from synfer.generator.pipeline import SynferPipeline

    vae, _ = tiny_vae_unet()
    vae = AutoencoderKL.from_config({**dict(vae.config), "force_upcast": True}).to(torch.float16)
    unet, encoder = tiny_sdxl_parts(tmp_path / "tok")
    pipe = SynferPipeline(vae=vae, unet=unet, text_encoder=encoder, scheduler=DDIMScheduler()).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    faces = pipe(["a happy face"], num_inference_steps=2, output_type="pt", precision="fp16").images
    assert torch.isfinite(faces).all() and pipe.vae.dtype == torch.float16
