"""Stable Diffusion 1.5 at full size, simulated: its published architecture with random weights, through synfer.

No weights can be downloaded here, but the architecture can be built: the UNet (860M parameters), the VAE and a
CLIP ViT-L/14 text encoder from SD-1.5's configs, a CLIP tokenizer over a small vocabulary, saved as a diffusers
checkpoint folder. Each stage then runs in its own process (so its peak memory is its own) and is timed:

    python benchmarks/sd15_simulation.py --work /tmp/sd15 [--stages all] [--precision fp32,bf16]
        [--out benchmarks/results/sd15_simulation.json]

Stages: ``build`` (components -> checkpoint), ``adapter`` (from_stable_diffusion, AU adapter installed and removed
exactly), ``sample`` (one 512 px face, text and AU guidance, 2 steps), ``guidance`` (semantic guidance through the
full-size VAE decoder), ``invert`` (DDIM inversion and an edit), ``feranno`` (FERAnno's feature hooks), ``label``
(``train-annotator``: a FERAnno head on the full-size UNet's features, one epoch; then ``label`` voting with it),
``flops`` (FLOPs of one UNet, VAE-decode and VAE-encode pass),
``train-generator`` (one epoch of 2 optimiser steps, full fine-tune without EMA and with gradient checkpointing),
``train-generator-lora`` (the same with LoRA
rank 4), ``train-adapter`` (one epoch of 2 steps). Every figure is per stage: wall seconds and the process's peak
resident memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STAGES = ("build", "adapter", "sample", "guidance", "invert", "feranno", "label", "flops", "train-generator",
          "train-generator-lora", "train-adapter")
UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
            attention_head_dim=8)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
           sample_size=512, scaling_factor=0.18215)
#: longer than CLIP's 77 tokens on purpose (the tokenizer here is character-level)
PROMPT = "A close-up photo of a young woman with a joyful expression, lip corners pulled up, cheeks raised."


def build(work: Path) -> dict[str, Any]:
    """SD-1.5-shaped components with random weights (seed 0) saved as a diffusers checkpoint, and a dataset."""
    import torch
    from _common import simulation_faces
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from synfer.models.text_encoders import character_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = character_clip_tokenizer(work / "tokenizer-src")
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, vocab_size=49408,
                                        hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=1,
                                        pad_token_id=1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    unet, vae = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE)
    sd = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(work / "sd15", safe_serialization=True)
    simulation_faces(work / "faces", PROMPT)
    params = {"unet": sum(p.numel() for p in unet.parameters()), "vae": sum(p.numel() for p in vae.parameters()),
              "text_encoder": sum(p.numel() for p in text.parameters())}
    return {"parameters": params}


def _pipe(work: Path) -> Any:
    import torch

    from synfer.core.dataset import DatasetFolder
    from synfer.generator.pipeline import SynferPipeline
    from synfer.models.au_adapter import AUAdapter

    pipe = SynferPipeline.from_stable_diffusion(work / "sd15")
    au_names = DatasetFolder(work / "faces").au_names
    torch.manual_seed(1)
    pipe.set_au_adapter(AUAdapter.for_unet(pipe.unet, list(au_names), hidden_dim=256))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _synfer_pipeline(work: Path) -> Path:
    """The checkpoint with its AU adapter saved as a synfer pipeline folder (once)."""
    if not (work / "synfer-sd" / "model_index.json").is_file():
        _pipe(work).save_pretrained(work / "synfer-sd")
    return work / "synfer-sd"


def _face(pipe: Any, precision: str, **kw: Any) -> Any:
    import torch

    aus = torch.full((1, len(pipe.au_adapter.au_names)), 0.3)
    return pipe([PROMPT], aus=aus, num_inference_steps=2, guidance_scale_text=5.0, guidance_scale_au=5.0,
                generator=torch.Generator().manual_seed(0), output_type="pt", precision=precision, **kw).images


def run_stage(stage: str, work: Path, precision: str) -> dict[str, Any]:
    """One stage in this process; returns what it measured besides time and memory."""
    import torch

    if stage == "build":
        return build(work)
    if stage == "adapter":
        pipe = _pipe(work)
        before = {k: type(v).__name__ for k, v in pipe.unet.attn_processors.items()}
        with pipe.au_adapter.applied_to(pipe.unet):
            during = sum(type(v).__name__ == "AUAttnProcessor" for v in pipe.unet.attn_processors.values())
        after = {k: type(v).__name__ for k, v in pipe.unet.attn_processors.items()}
        return {"au_layers": during, "restored_exactly": before == after,
                "adapter_parameters": sum(p.numel() for p in pipe.au_adapter.parameters())}
    if stage == "sample":
        pipe = _pipe(work)
        image = _face(pipe, precision)
        return {"shape": list(image.shape), "finite": bool(torch.isfinite(image).all())}
    if stage == "guidance":
        from synfer.generator.guidance import SemanticGuidance
        from synfer.models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier

        pipe = _pipe(work)
        guide = SemanticGuidance(ExpressionClassifier.from_pretrained(DEFAULT_CLASSIFIER), torch.tensor([1]), 0.1,
                                 (0.0, 1.0))
        image = _face(pipe, precision, callback_on_step_end=guide, callback_on_step_end_tensor_inputs=guide.tensor_inputs)
        return {"shape": list(image.shape), "finite": bool(torch.isfinite(image).all())}
    if stage == "invert":
        from synfer.generator.layout import invert

        pipe = _pipe(work)
        face = _face(pipe, precision)
        latents = invert(pipe, face * 2 - 1, 2, 0.6)
        edited = _face(pipe, precision, latents=latents, strength=0.6)
        return {"latents": list(latents.shape), "finite": bool(torch.isfinite(edited).all())}
    if stage == "feranno":
        from synfer.models.denoiser import denoise
        from synfer.models.feranno import UNetFeatureHooks

        pipe = _pipe(work)
        cond, _ = pipe.encode_prompt([PROMPT], torch.device("cpu"))
        with UNetFeatureHooks(pipe.unet, tokens=8) as hooks, torch.no_grad():
            denoise(pipe.unet, torch.randn(1, 4, 64, 64), 500, cond)
        return {"features": [list(f.shape) for f in hooks.features], "attention_maps": len(hooks.attention)}
    if stage == "label":
        from synfer.cli import main
        from synfer.core.dataset import DatasetFolder

        pipeline, run = _synfer_pipeline(work), work / f"feranno-{precision}"
        code = main(["train-annotator", str(work / "faces"), str(run), "--pipeline", str(pipeline), "--epochs", "1",
                     "--batch-size", "2", "--lr", "1e-3", "--grid", "4", "--dim", "32", "--heads", "2",
                     "--read-batch-size", "1", "--seed", "0", "--precision", precision, "--overwrite"])
        labelled = work / f"labelled-{precision}"
        code += main(["label", str(work / "faces"), str(labelled), str(run), "--split", "train", "--batch-size", "1",
                      "--overwrite"])
        records = list(DatasetFolder(labelled).records())
        return {"exit": code, "labelled": len(records), "labels": sorted({r.expression for r in records})}
    if stage == "flops":
        from torch.utils.flop_counter import FlopCounterMode

        pipe = _pipe(work)
        latents, cond = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
        passes = {"unet_forward": lambda: pipe.unet(latents, 500, encoder_hidden_states=cond),
                  "vae_decode_512": lambda: pipe.vae.decode(latents), "vae_encode_512":
                  lambda: pipe.vae.encode(torch.randn(1, 3, 512, 512))}
        tflops = {}
        for name, fn in passes.items():
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                fn()
            tflops[name] = round(counter.get_total_flops() / 1e12, 4)
        return {"tflops_batch_1": tflops}
    if stage in ("train-generator", "train-generator-lora", "train-adapter"):
        from _common import cli_epoch

        common = ["--epochs", "1", "--batch-size", "1", "--lr", "1e-5", "--sample-steps", "1", "--seed", "0",
                  "--precision", precision, "--overwrite"]
        if stage == "train-adapter":
            args = ["train-adapter", str(work / "faces"), str(work / f"{stage}-{precision}"),
                    str(_synfer_pipeline(work)), *common]
        else:  # the full fine-tune without EMA and with gradient checkpointing, to fit a 24 GB machine
            extra = ["--lora-rank", "4"] if stage.endswith("lora") else ["--ema-decay", "0",
                                                                         "--gradient-checkpointing", "true"]
            args = ["train-generator", str(work / "faces"), str(work / f"{stage}-{precision}"), "--pretrained",
                    str(work / "sd15"), *common, *extra]
        return cli_epoch(args, work / f"{stage}-{precision}")
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def main() -> None:
    from _common import run_stages

    run_stages(__file__, __doc__, STAGES, run_stage, Path("benchmarks/results/sd15_simulation.json"))


if __name__ == "__main__":
    main()
