"""``synfer train-generator``: the text-conditioned latent-diffusion UNet, and what the AU adapter trainer reuses.

Mini path: a UNet (:func:`synfer.models.denoiser.build_mini_unet`) from scratch on the latents of a VAE from ``train-vae`` (12x12x4 for FER+),
conditioned on the frozen MiniLM-L6 + its trainable projection. Full path (``pretrained``): a Stable Diffusion
checkpoint's UNet fine-tuned fully or with LoRA (peft), its CLIP text encoder frozen. The loss is the usual one,
``|| eps - eps_theta(sqrt(a_t) z + sqrt(1 - a_t) eps, t, c) ||^2`` (v-prediction where the checkpoint uses it),
optionally min-SNR weighted. Captions are replaced by "" with probability ``caption_dropout``, so one model gives
both terms of classifier-free guidance.

Costs kept off the training steps: every face is encoded once to its latent (the VAE never runs in the loop), and the
frozen text work is done once per distinct caption (MiniLM's states before the projection, or a frozen encoder's
embeddings), kept in fp16. No flips or crops: captions and AUs name sides ("head turned left", ``AU12_L``).

EMA (with warm-up) against raw weights: each epoch both are scored on the same fixed draw of validation latents,
noise and timesteps, and the lower loss is exported (``weights`` in metrics.jsonl). The run folder::

    OUT/pipeline/             the SynferPipeline (SynferPipeline.from_pretrained(OUT/pipeline) generates)
    OUT/lora/                 the LoRA weights alone (LoRA runs; OUT/pipeline has them fused)
    OUT/samples/epoch_NNN.png one face per sample prompt, fixed seeds
    OUT/metrics.jsonl         train loss, val loss (raw, EMA), images/s per epoch
    OUT/train_config.json, OUT/state/
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.dataset import DatasetError
from ..core.images import save_grid
from ..core.options import RunOptions, Schedule
from ..core.splits import Split, index_loader, load_split
from ..core.training import Trainer, atomic_save_dir, batch_draw, start_run
from ..models.denoiser import build_mini_unet, denoise
from ..models.text_encoders import CLIPTextEncoderWrapper, MiniLMTextEncoder, SDXLTextEncoder, TextEncoder
from .captions import CaptionEmbedder
from .train_vae import encode_latents, group_norm_groups

#: Validation latents scored each epoch (one fixed draw of noise and evenly spread timesteps).
VAL_FACES = 512


# -- components --------------------------------------------------------------------------------------------------
def load_vae(path: Path) -> Any:
    """An AutoencoderKL folder, or a ``train-vae`` run folder holding ``vae/``."""
    from diffusers import AutoencoderKL

    path = Path(path)
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"No VAE at {path} (config.json missing); train one with `synfer train-vae`.")
    return AutoencoderKL.from_pretrained(str(folder), use_safetensors=True)


def load_text_encoder(spec: str, cross_attention_dim: int) -> TextEncoder:
    """``minilm`` (a new projection to ``cross_attention_dim``) or a saved text-encoder folder (MiniLM, CLIP or
    SDXL's pair)."""
    if spec == "minilm":
        return MiniLMTextEncoder(cross_attention_dim=cross_attention_dim)
    folder = Path(spec)
    if (folder / "text_model_2").is_dir():
        return SDXLTextEncoder.from_pretrained(folder)
    if (folder / "text_model").is_dir():
        return CLIPTextEncoderWrapper.from_pretrained(folder)
    if (folder / "projection").is_dir():
        return MiniLMTextEncoder.from_pretrained(folder)
    raise ValueError(f"text_encoder must be 'minilm' or a folder saved by a synfer text encoder; got {spec!r}.")


def build_unet(sample_size: int, channels: int, block_out_channels: tuple[int, ...], layers_per_block: int,
               attention_head_dim: int, cross_attention_dim: int, attention_levels: tuple[int, ...] | None) -> Any:
    """The mini generator's UNet (:func:`synfer.models.denoiser.build_mini_unet`) with GroupNorm groups that divide
    every width."""
    return build_mini_unet(sample_size, channels, block_out_channels, layers_per_block, attention_head_dim,
                           cross_attention_dim, attention_levels, group_norm_groups(block_out_channels))


def noise_schedule(kind: str) -> Any:
    """The training schedule: ``ddpm`` (SD's scaled-linear betas) or ``ddpm-cosine``; latents are never clipped."""
    from diffusers import DDPMScheduler

    betas = {"ddpm": "scaled_linear", "ddpm-cosine": "squaredcos_cap_v2"}
    if kind not in betas:
        raise ValueError(f"scheduler must be one of {sorted(betas)}; got {kind!r}.")
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=betas[kind], beta_start=0.00085, beta_end=0.012,
                         clip_sample=False, prediction_type="epsilon")


def noise_loss(unet: nn.Module, scheduler: Any, latents: torch.Tensor, cond: torch.Tensor,
               snr_gamma: float | None = None, noise: torch.Tensor | None = None,
               timesteps: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
    """The denoising loss of latents (B, c, h, w) under ``cond`` (B, L, D); noise and timesteps drawn unless given.

    ``snr_gamma``: min-SNR weighting (Hang et al. 2023), min(SNR, gamma) / SNR (/ (SNR + 1) for v-prediction).
    """
    step = denoise_step(unet, scheduler, latents, cond, noise, timesteps)
    return step.loss(scheduler, snr_gamma, reduce)


@dataclass
class DenoiseStep:
    """One training forward: noisy latents, the model's output, its regression target and the timesteps (B,)."""

    noisy: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor

    def loss(self, scheduler: Any, snr_gamma: float | None = None, reduce: bool = True) -> torch.Tensor:
        """MSE of pred to target per face (B,) with optional min-SNR weighting; the mean if ``reduce``."""
        per_face = F.mse_loss(self.pred.float(), self.target.float(), reduction="none").flatten(1).mean(1)
        if snr_gamma:
            alphas = scheduler.alphas_cumprod.to(self.pred.device)[self.timesteps]
            snr = alphas / (1 - alphas)
            v_pred = scheduler.config.prediction_type == "v_prediction"
            per_face = per_face * snr.clamp(max=snr_gamma) / (snr + 1 if v_pred else snr)
        return per_face.mean() if reduce else per_face


def denoise_step(unet: nn.Module, scheduler: Any, latents: torch.Tensor, cond: torch.Tensor,
                 noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None) -> DenoiseStep:
    """Noise latents (B, c, h, w) at random (or given) timesteps and run the UNet under ``cond`` (B, L, D)."""
    b, shape, device = len(latents), latents.shape[1:], latents.device
    if noise is None:
        noise = batch_draw(lambda n: torch.randn((n, *shape), device=device, dtype=latents.dtype), b)
    if timesteps is None:
        timesteps = batch_draw(lambda n: torch.randint(0, scheduler.config.num_train_timesteps, (n,), device=device), b)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    v_pred = scheduler.config.prediction_type == "v_prediction"
    target = scheduler.get_velocity(latents, noise, timesteps) if v_pred else noise
    pred = denoise(unet, noisy, timesteps, cond)
    return DenoiseStep(noisy, pred, target, timesteps)


class ValDraw:
    """A fixed draw (seeded, independent of training randomness) for comparable validation losses.

    Timesteps are spread evenly over the schedule, so the mean is a low-variance estimate of the full loss.
    """

    def __init__(self, latents: torch.Tensor, ids: torch.Tensor, scheduler: Any, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(latents), generator=g)[:VAL_FACES]
        self.latents, self.ids = latents[keep], ids[keep]
        self.keep = keep
        self.noise = torch.randn(self.latents.shape, generator=g)
        steps = scheduler.config.num_train_timesteps
        self.timesteps = torch.linspace(0, steps - 1, len(keep)).round().long()[torch.randperm(len(keep), generator=g)]

    @torch.no_grad()
    def loss(self, accel: Any, unet: nn.Module, scheduler: Any, condition: Callable[[torch.Tensor], torch.Tensor],
             batch_size: int = 128) -> float:
        """Mean denoising loss; ``condition(rows)`` gives the cond of those rows of the draw."""
        total, dev = 0.0, accel.device
        for rows in torch.arange(len(self.ids)).split(batch_size):
            with accel.autocast():
                per = noise_loss(unet, scheduler, self.latents[rows].to(dev), condition(rows),
                                 noise=self.noise[rows].to(dev), timesteps=self.timesteps[rows].to(dev), reduce=False)
            total += per.sum().item()
        return total / max(1, len(self.ids))


def sample_prompts_from(faces: Split, n: int = 8) -> list[int]:
    """Rows of up to ``n`` distinct captions (the grid's default prompts: in-distribution by construction)."""
    first: dict[str, int] = {}
    for i, c in enumerate(faces.captions):
        first.setdefault(c, i)
    return list(first.values())[:n]


def sample_grid(pipe: Any, prompts: list[str], path: Path, seed: int, steps: int, aus: torch.Tensor | None = None,
                guidance_scale_text: float = 5.0, guidance_scale_au: float = 2.0) -> Path:
    """One image per prompt, the i-th seeded with ``seed + i`` (the same faces every epoch), as one PNG row."""
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    images = pipe(prompts, aus=aus, num_inference_steps=steps, guidance_scale_text=guidance_scale_text,
                  guidance_scale_au=guidance_scale_au, generator=generators, output_type="pt").images
    return save_grid(images, path, nrow=len(prompts))


def _is_synfer_pipeline(folder: Path) -> bool:
    index = folder / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name") == "SynferPipeline"


def _add_lora(unet: nn.Module, rank: int) -> None:
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise ImportError("lora_rank needs the peft package: pip install peft (or leave lora_rank unset to "
                          "fine-tune the whole UNet).") from e
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))


def _export_unet(unet: nn.Module, lora: bool) -> nn.Module:
    """The UNet to save: itself, or for LoRA a copy with the LoRA fused into its weights and the layers removed."""
    if not lora:
        return unet
    fused = copy.deepcopy(unet)
    fused.fuse_lora()
    fused.unload_lora()
    return fused


def _components(pretrained: str | None, vae: Path | None, text_encoder: str, cross_attention_dim: int,
                block_out_channels: tuple[int, ...], layers_per_block: int, attention_head_dim: int,
                attention_levels: tuple[int, ...] | None, scheduler: str) -> tuple[Any, Any, Any, Any, Any]:
    """(VAE, text encoder, UNet, training noise schedule, sampling scheduler): a pretrained pipeline's (SD or
    synfer), or the mini path's: ``vae`` loaded, a new UNet sized to its latents, the MiniLM encoder."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from .pipeline import SynferPipeline

    if pretrained is not None:
        local = Path(pretrained)
        base = (SynferPipeline.from_pretrained(local) if _is_synfer_pipeline(local)
                else SynferPipeline.from_stable_diffusion(pretrained))
        return (base.vae, base.text_encoder, base.unet, DDPMScheduler.from_config(base.scheduler.config),
                base.scheduler)
    vae_model = load_vae(vae)
    encoder = load_text_encoder(text_encoder, cross_attention_dim)
    factor = 2 ** (len(vae_model.config.block_out_channels) - 1)
    unet = build_unet(vae_model.config.sample_size // factor, vae_model.config.latent_channels,
                      tuple(block_out_channels), layers_per_block, attention_head_dim, encoder.output_dim,
                      None if attention_levels is None else tuple(attention_levels))
    train_sched = noise_schedule(scheduler)
    sample_sched = DDIMScheduler.from_config(train_sched.config, timestep_spacing="trailing", set_alpha_to_one=False)
    return vae_model, encoder, unet, train_sched, sample_sched


def _check_options(caption_dropout: float, pretrained: str | None, vae: Path | None, lora_rank: int | None,
                   text_encoder: str) -> None:
    """Refuse contradictory options before anything is loaded or written."""
    if not 0 <= caption_dropout < 1:
        raise ValueError(f"caption_dropout must be in [0, 1); got {caption_dropout}.")
    if pretrained is None and vae is None:
        raise ValueError("Give vae (a `synfer train-vae` output) for the mini model, or pretrained (an SD checkpoint).")
    if lora_rank is not None and pretrained is None:
        raise ValueError("lora_rank fine-tunes a pretrained UNet; pass pretrained=<SD checkpoint> with it.")
    if pretrained is not None and text_encoder != "minilm":
        raise ValueError("pretrained brings its own text encoder; leave text_encoder at its default.")


def train_generator(
    data: list[Path],
    out: Path,
    vae: Path | None = None,
    text_encoder: str = "minilm",
    pretrained: str | None = None,
    split: str = "train",
    val_split: str = "val",
    block_out_channels: tuple[int, ...] = (96, 192),
    layers_per_block: int = 2,
    attention_head_dim: int = 8,
    attention_levels: tuple[int, ...] | None = None,
    cross_attention_dim: int = 256,
    lora_rank: int | None = None,
    caption_dropout: float = 0.1,
    class_balance: float = 0.0,
    ema_decay: float = 0.999,
    snr_gamma: float | None = None,
    scheduler: str = "ddpm",
    sample_every_epochs: int = 1,
    sample_prompts: list[str] | None = None,
    sample_steps: int = 25,
    text_cache: Path | None = None,
    gradient_checkpointing: bool = False,
    schedule: Schedule = Schedule(30, 64, 2e-4),
    run: RunOptions = RunOptions(),
) -> Path:
    """Train the text-to-face latent diffusion model; export a SynferPipeline to ``OUT/pipeline``.

    Args:
        data: dataset folders with captions (from ``synfer prepare``).
        out: run folder (see the module docs).
        vae: a ``train-vae`` run or VAE folder (mini path; faces are resized to its ``sample_size``).
        text_encoder: ``minilm`` (frozen MiniLM-L6 + a new trainable projection) or a saved text-encoder folder.
        pretrained: a diffusers SD checkpoint, folder or hub id (its VAE, CLIP, UNet and noise schedule; the UNet
            is fine-tuned), or a SynferPipeline folder to continue (its AU adapter, trained for the old UNet, is
            not carried over); replaces vae, text_encoder and the UNet options.
        split, val_split: trained on / scored on (without a val split: a fixed set of training faces).
        block_out_channels, layers_per_block, attention_levels, cross_attention_dim: the new UNet (mini path):
            widths per level, ResNets per block, levels with cross-attention (default all but the first), text width.
        attention_head_dim: passed to diffusers as is; its legacy meaning there is the number of heads.
        lora_rank: fine-tune ``pretrained`` with LoRA of this rank on the attention projections (needs peft)
            instead of every UNet weight.
        caption_dropout: probability of training on "" instead of the caption (classifier-free guidance).
        class_balance: 0 = every face once per epoch; > 0 = an epoch of as many faces drawn with probability
            ~ count(expression) ** -class_balance (1: classes equally often, 0.5: square-root balancing, which
            lifts rare expressions such as contempt without repeating their few faces as often).
        schedule: AdamW, linear warm-up then cosine decay; for SD fine-tuning use --lr 1e-5 (plain flags work:
            --epochs, --batch-size, --lr).
        ema_decay: EMA of the trained weights (0 = none); the better on validation is exported.
        snr_gamma: min-SNR loss weighting (5 is the paper's value); None = plain MSE.
        scheduler: training noise schedule, ``ddpm`` or ``ddpm-cosine`` (sampling uses DDIM on the same schedule).
        sample_every_epochs: epochs between sample grids (the last epoch always gets one).
        sample_prompts: grid prompts (default up to 8 distinct validation captions).
        sample_steps: DDIM steps for the grids.
        run: seed, limit, precision, resume, overwrite, report_to (plain flags work: --seed 1, --resume).
        text_cache: a folder to keep the frozen text states of the captions in and reuse them from (safetensors,
            keyed by the frozen text weights and the caption set; 0.8 GB for FER+'s 22k distinct captions), so a
            resumed run skips the encoding; None = encode them at every start.
        gradient_checkpointing: recompute the denoiser's blocks in the backward pass instead of keeping their
            activations (diffusers' ``enable_gradient_checkpointing``): less memory, about a third more time per
            step; the same steps (not in the options a resume must match).

    Returns:
        ``OUT/pipeline``.
    """
    from .pipeline import SynferPipeline

    out = Path(out)
    _check_options(caption_dropout, pretrained, vae, lora_rank, text_encoder)
    accel, resume = start_run(out, run, schedule)

    # 1. components
    vae_model, encoder, unet, train_sched, sample_sched = _components(
        pretrained, vae, text_encoder, cross_attention_dim, block_out_channels, layers_per_block, attention_head_dim,
        attention_levels, scheduler)
    vae_model.requires_grad_(False).eval().to(accel.device)
    encoder.to(accel.device)
    unet.to(accel.device)
    if lora_rank is not None:
        _add_lora(unet, lora_rank)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    # 2. data: latents once, captions once
    cfg = vae_model.config
    size = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    train = load_split(data, split, labelled=False, input_size=size, need_captions=True, limit=run.limit)
    if len(train) == 0:
        raise DatasetError(f"No captioned records in split {split!r} of {[str(p) for p in data]}.")
    val = load_split(data, val_split, labelled=False, input_size=size, need_captions=True, limit=run.limit)
    val = val if len(val) else train
    latents = encode_latents(vae_model, train.images).cpu()
    val_latents = encode_latents(vae_model, val.images).cpu()
    embed = CaptionEmbedder(encoder, train.captions + val.captions, accel.device, cache=text_cache)
    ids, val_ids = embed.ids_of(train.captions), embed.ids_of(val.captions)
    draw = ValDraw(val_latents, val_ids, train_sched, run.seed)
    prompts = sample_prompts or [val.captions[i] for i in sample_prompts_from(val)]

    # 3. loss and trainer
    loader = accel.prepare(index_loader(len(latents), schedule.batch_size, run.seed,
                                        lambda idx: (latents[idx], ids[idx]),
                                        train.label_names(), class_balance))

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        z, rows = batch[0].to(accel.device), batch[1]
        rows = torch.where(batch_draw(torch.rand, len(rows)) < caption_dropout, embed.empty, rows)
        return noise_loss(unet, train_sched, z, embed(rows), snr_gamma)

    options = {"data": [str(Path(p).resolve()) for p in data], "split": split, "size": list(size),
               "vae": None if vae is None else str(Path(vae).resolve()), "text_encoder": text_encoder,
               "pretrained": pretrained if pretrained is None or not Path(pretrained).exists()
               else str(Path(pretrained).resolve()),
               "unet": dict(unet.config) if pretrained is None else None, "lora_rank": lora_rank,
               "caption_dropout": caption_dropout, "class_balance": class_balance,
               "batch_size": schedule.batch_size, "lr": schedule.lr, "ema_decay": ema_decay, "snr_gamma": snr_gamma,
               "scheduler": dict(train_sched.config), "seed": run.seed, "limit": run.limit}
    trainer = Trainer(accel, out, {"unet": unet, "text_encoder": encoder}, schedule.epochs, len(loader),
                      schedule.lr, ema_decay=ema_decay, fingerprint=options)
    # nothing below draws random numbers before fit(): a resumed run replays the same one
    trainer.begin(resume, "train-generator", {**options, "epochs": schedule.epochs, "sample_prompts": prompts,
                                              "sample_steps": sample_steps, "precision": run.precision,
                                              "gradient_checkpointing": gradient_checkpointing},
                  data={"train_faces": len(train), "val_faces": len(draw.ids), "skipped_without_caption": train.skipped,
                        "distinct_captions": len(embed.unique), "text_cache": embed.mode,
                        "unet_parameters": sum(p.numel() for p in unet.parameters())})

    # 4. after each epoch: raw vs EMA on the fixed draw, the better one exported and sampled
    def end_epoch(epoch: int) -> dict[str, Any]:
        scores = {}
        for which in ("raw", "ema") if trainer.ema is not None else ("raw",):
            with trainer.weights(which):
                scores[which] = draw.loss(accel, unet, train_sched, lambda rows: embed(draw.ids[rows]))
        pick = min(scores, key=scores.get)
        with trainer.weights(pick):
            pipe = SynferPipeline(vae=vae_model, unet=_export_unet(unet, lora_rank is not None),
                                  text_encoder=encoder, scheduler=sample_sched)
            if (epoch + 1) % sample_every_epochs == 0 or epoch + 1 == schedule.epochs:
                sample_grid(pipe, prompts, out / "samples" / f"epoch_{epoch + 1:03d}.png", run.seed, sample_steps)
            atomic_save_dir(out / "pipeline", pipe.save_pretrained)
            if lora_rank is not None:
                atomic_save_dir(out / "lora", unet.save_lora_adapter)
        return {"val_loss": scores[pick], **{f"val_loss_{k}": v for k, v in scores.items()}, "weights": pick}

    trainer.fit(loader, loss_fn, end_epoch)
    accel.print(f"pipeline exported to {out / 'pipeline'}")
    return out / "pipeline"
