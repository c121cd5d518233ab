"""SDXL at full size, simulated: SDXL-base's published architecture with random weights, through synfer.

The UNet (2.57B parameters, ``text_time`` added conditioning), both text encoders (CLIP ViT-L/14 and OpenCLIP
ViT-bigG/14's text tower with its projection), the VAE, and a CLIP tokenizer over a small vocabulary, saved as a
diffusers SDXL checkpoint by diffusers' own ``StableDiffusionXLPipeline``. Each stage runs in its own process (its
peak memory is its own) and is timed:

    python benchmarks/sdxl_simulation.py --work /tmp/sdxl [--stages all] [--precision fp32,bf16]
        [--out benchmarks/results/sdxl_simulation.json]

Stages: ``build`` (components -> checkpoint, and a dataset of two 512 px faces), ``forward``
(``from_stable_diffusion`` with both text encoders, the AU adapter in every cross-attention layer, one UNet
forward at 512 px with the packed SDXL conditioning and AU tokens, the adapter removed exactly, FLOPs of the
forward; the synfer pipeline saved for the next stage), ``train-adapter`` (``synfer train-adapter`` with gradient
checkpointing and no EMA, to fit 24 GB: one epoch of two optimiser steps at batch 1). Every figure is per stage: wall seconds and the process's peak resident memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STAGES = ("build", "forward", "train-adapter")
#: stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
           sample_size=1024, scaling_factor=0.13025, force_upcast=True)
#: text_encoder (CLIP ViT-L/14) and text_encoder_2 (OpenCLIP ViT-bigG/14, with a 1280-wide projection)
TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            hidden_act="quick_gelu", projection_dim=768)
TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280)
SIZE = 512  # pixels: 64 x 64 latents (SDXL's own 1024 px quadruples the UNet's cost)
PROMPT = "A close-up photo of a young woman with a joyful expression, lip corners pulled up, cheeks raised."


def build(work: Path) -> dict[str, Any]:
    """SDXL-shaped components with random weights (seed 0) saved as a diffusers SDXL checkpoint, and a dataset."""
    import torch
    from _common import simulation_faces
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from synfer.models.text_encoders import character_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = character_clip_tokenizer(work / "tokenizer-src")
    common = dict(max_position_embeddings=77, vocab_size=49408, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text = CLIPTextModel(CLIPTextConfig(**TEXT, **common))
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2, **common))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    unet, vae = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE)
    sdxl = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    sdxl.save_pretrained(work / "sdxl", safe_serialization=True)
    simulation_faces(work / "faces", PROMPT, SIZE)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"parameters": {"unet": count(unet), "vae": count(vae), "text_encoder": count(text),
                           "text_encoder_2": count(text_2)}}


def forward(work: Path, precision: str) -> dict[str, Any]:
    """from_stable_diffusion, the adapter installed, one timed UNet forward at 512 px, the adapter removed."""
    import time

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from synfer.core.dataset import DatasetFolder
    from synfer.core.runtime import autocast
    from synfer.generator.pipeline import SynferPipeline
    from synfer.models.au_adapter import AUAdapter
    from synfer.models.denoiser import denoise, family_key, family_of

    pipe = SynferPipeline.from_stable_diffusion(work / "sdxl")
    torch.manual_seed(1)
    au_names = list(DatasetFolder(work / "faces").au_names)
    pipe.set_au_adapter(AUAdapter.for_unet(pipe.unet, au_names, hidden_dim=256))
    before = {k: type(v).__name__ for k, v in pipe.unet.attn_processors.items()}
    cond, _ = pipe.encode_prompt([PROMPT], torch.device("cpu"))
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8)
    with torch.no_grad(), pipe.au_adapter.applied_to(pipe.unet):
        layers = sum(type(v).__name__ == "AUAttnProcessor" for v in pipe.unet.attn_processors.values())
        full = pipe.au_adapter.condition(cond, torch.full((1, len(au_names)), 0.3))
        with autocast(torch.device("cpu"), precision):
            t0 = time.perf_counter()
            eps = denoise(pipe.unet, latents, 500, full)
            seconds = time.perf_counter() - t0
            with FlopCounterMode(display=False) as counter:
                denoise(pipe.unet, latents, 500, full)
    after = {k: type(v).__name__ for k, v in pipe.unet.attn_processors.items()}
    if precision == "fp32" and not (work / "synfer-sdxl" / "model_index.json").is_file():
        pipe.save_pretrained(work / "synfer-sdxl")
    return {"family": family_key(family_of(pipe.unet)),
            "text_encoder": type(pipe.text_encoder).__name__, "condition": list(full.shape),
            "au_layers": layers, "restored_exactly": before == after,
            "adapter_parameters": sum(p.numel() for p in pipe.au_adapter.parameters()), "prediction": list(eps.shape),
            "finite": bool(torch.isfinite(eps).all()), "forward_seconds": round(seconds, 1),
            "unet_tflops_512px": round(counter.get_total_flops() / 1e12, 3)}


def run_stage(stage: str, work: Path, precision: str) -> dict[str, Any]:
    """One stage in this process; returns what it measured besides time and memory."""
    if stage == "build":
        return build(work)
    if stage == "forward":
        return forward(work, precision)
    if stage == "train-adapter":
        from _common import cli_epoch

        run = work / f"{stage}-{precision}"
        return cli_epoch(["train-adapter", str(work / "faces"), str(run), str(work / "synfer-sdxl"), "--epochs", "1",
                          "--batch-size", "1", "--lr", "1e-5", "--sample-steps", "1", "--seed", "0", "--precision",
                          precision, "--gradient-checkpointing", "true", "--ema-decay", "0", "--overwrite"], run)
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def main() -> None:
    from _common import run_stages

    run_stages(__file__, __doc__, STAGES, run_stage, Path("benchmarks/results/sdxl_simulation.json"))


if __name__ == "__main__":
    main()
