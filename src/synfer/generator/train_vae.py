"""``synfer train-vae``: a diffusers ``AutoencoderKL`` trained from scratch on dataset-folder faces.

The mini generator's latent space: 48x48 gray FER+ faces, three encoder blocks (two downsamplings of 2) ->
12x12x4 latents, where a 13M-parameter UNet trains at ~44 img/s on two CPU cores (COMPUTE.md) against ~3 img/s for
a pixel-space UNet of similar quality. Loss: L1 (or MSE) reconstruction + ``kl_weight`` x KL to N(0, I) (weighted
as in LDM: the KL summed over a face's latents, per pixel), optionally + LPIPS. No adversarial loss: at 48 px an
L1-trained decoder is sharp enough and a GAN term would triple the CPU cost.

After every epoch the latent std over (up to) 2,048 training faces is measured and ``scaling_factor = 1 / std`` is
written into the exported config, so latents reach the UNet with unit variance (SD's recipe; the pipeline divides
by it before decoding). The run folder::

    OUT/vae/                  config.json + diffusion_pytorch_model.safetensors (the last epoch)
    OUT/samples/epoch_NNN.png validation faces (top row) and their reconstructions (bottom row)
    OUT/metrics.jsonl         train loss, val L1 and PSNR, latent mean/std, images/s per epoch
    OUT/train_config.json     resolved options and versions
    OUT/state/                resume state of the last finished epoch
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.dataset import DatasetError
from ..core.images import save_grid
from ..core.options import RunOptions, Schedule
from ..core.splits import index_loader, load_split
from ..core.training import Trainer, atomic_save_dir, batch_draw, start_run

#: LDM's weight of the LPIPS term next to an L1 reconstruction loss.
PERCEPTUAL_WEIGHT = 1.0
#: Faces encoded to estimate the latent std (the scaling factor).
SCALE_SAMPLE = 2048


def build_vae(channels: int, image_size: int, block_out_channels: tuple[int, ...], latent_channels: int,
              layers_per_block: int) -> Any:
    """An ``AutoencoderKL`` with ``len(block_out_channels) - 1`` downsamplings of 2 (latents are image_size / 2**k)."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=latent_channels,
                         block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         norm_num_groups=group_norm_groups(block_out_channels), sample_size=image_size)


@torch.no_grad()


def group_norm_groups(widths: Sequence[int]) -> int:
    """The largest GroupNorm group count <= 32 that divides every block width (32 for SD's widths)."""
    g = math.gcd(*widths)
    return max(d for d in range(1, min(32, g) + 1) if g % d == 0)

def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1] (what the VAE reads and the pipeline's decode undoes)."""
    return images.float() / 127.5 - 1.0

def encode_latents(vae: Any, images: torch.Tensor, batch_size: int = 256, scaled: bool = True) -> torch.Tensor:
    """uint8 faces (N, C, H, W) -> posterior means (N, c, h, w); if ``scaled`` as the UNet sees them,
    ``(z - shift_factor) * scaling_factor`` (what the pipeline's decode undoes).

    The mean, not a sample: one fixed latent per face (the trainers encode every face once), and with a small KL
    weight the posterior's std is tiny next to its spread over faces.
    """
    device, dtype = vae.device, vae.dtype
    parts = [vae.encode(to_model_range(chunk).to(device, dtype)).latent_dist.mode().float()
             for chunk in images.split(batch_size)]
    latents = torch.cat(parts) if parts else torch.zeros(0)
    if not scaled:
        return latents
    shift = vae.config.get("shift_factor")  # None for SD 1/2 and ours; the pipeline's decode adds it back
    return (latents - (shift or 0.0)) * vae.config.scaling_factor


@torch.no_grad()
def reconstruct(vae: Any, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 faces (N, C, H, W) -> reconstructions through the posterior means, float in [-1, 1]."""
    out = []
    for chunk in images.split(batch_size):
        z = vae.encode(to_model_range(chunk).to(vae.device, vae.dtype)).latent_dist.mode()
        out.append(vae.decode(z).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def train_vae(
    data: list[Path],
    out: Path,
    split: str = "train",
    val_split: str = "val",
    image_size: int | None = None,
    channels: int | None = None,
    block_out_channels: tuple[int, ...] = (32, 64, 128),
    latent_channels: int = 4,
    layers_per_block: int = 1,
    kl_weight: float = 1e-6,
    recon_loss: str = "l1",
    perceptual: bool = False,
    schedule: Schedule = Schedule(20, 64, 2e-4),
    run: RunOptions = RunOptions(),
) -> Path:
    """Train an AutoencoderKL from scratch on the faces of one or more dataset folders.

    Args:
        data: dataset folders (labels and captions not needed).
        out: run folder (see the module docs); the VAE is ``OUT/vae``.
        split: split trained on.
        val_split: split monitored (L1, PSNR, grids); where the folders have none, a fixed set of training faces.
        image_size: side in pixels faces are resized to (default: the first image's; 48 for FER+).
        channels: 1 (gray) or 3 (RGB) (default: the first image's mode).
        block_out_channels: encoder/decoder block widths; k blocks downsample k - 1 times.
        latent_channels: channels of the latents.
        layers_per_block: ResNet layers per encoder block (the decoder has one more).
        schedule: the optimisation schedule (plain flags work: --epochs, --batch-size, --lr).
        kl_weight: weight of the KL term (1e-6: near-deterministic latents, as in SD's VAE).
        recon_loss: ``l1`` or ``mse``.
        perceptual: add LPIPS (the ``lpips`` package; it fetches VGG weights on first use).
        run: seed, limit, precision, resume, overwrite, report_to (plain flags work: --seed 1, --resume).

    Returns:
        ``OUT/vae``, loadable with ``AutoencoderKL.from_pretrained``.
    """
    out = Path(out)
    if recon_loss not in ("l1", "mse"):
        raise ValueError(f"recon_loss must be 'l1' or 'mse'; got {recon_loss!r}.")
    if len(block_out_channels) < 1:
        raise ValueError("block_out_channels needs at least one width.")
    lpips_net = None
    if perceptual:
        try:
            import lpips
        except ImportError as e:
            raise ImportError("perceptual=True needs the lpips package: pip install lpips (it downloads VGG weights "
                              "from torchvision on first use, so it needs the network once).") from e
        lpips_net = lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)
    accel, resume = start_run(out, run, schedule)

    # 1. faces in memory, uint8
    size = (channels, image_size, image_size) if channels and image_size else None
    train = load_split(data, split, labelled=False, input_size=size, limit=run.limit)
    if len(train) == 0:
        raise DatasetError(f"No records in split {split!r} of {[str(p) for p in data]}.")
    c, h, w = train.images.shape[1:]
    size = (channels or c, image_size or h, image_size or w)
    if size != (c, h, w):
        train = load_split(data, split, labelled=False, input_size=size, limit=run.limit)
    factor = 2 ** (len(block_out_channels) - 1)
    if size[1] % factor or size[2] % factor:
        raise ValueError(f"image size {size[1]}x{size[2]} is not divisible by {factor} (2 ** (blocks - 1)); "
                         "pick image_size or block_out_channels to fit.")
    val = load_split(data, val_split, labelled=False, input_size=size, limit=run.limit)
    val_source = val_split if len(val) else f"{split} (no {val_split!r} split)"
    val_images = val.images if len(val) else train.images[:512]
    scale_images = train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(run.seed))
                                [:SCALE_SAMPLE]]

    # 2. model and loss
    vae = build_vae(size[0], size[1], tuple(block_out_channels), latent_channels, layers_per_block).to(accel.device)
    if lpips_net is not None:
        lpips_net = lpips_net.to(accel.device)
    images = train.images
    loader = accel.prepare(index_loader(len(images), schedule.batch_size, run.seed, lambda idx: (images[idx],)))
    pixels = size[0] * size[1] * size[2]

    def loss_fn(batch: tuple[torch.Tensor]) -> torch.Tensor:
        x = to_model_range(batch[0]).to(accel.device)
        posterior = vae.encode(x).latent_dist
        mean = posterior.mean  # posterior.sample(), its noise drawn for the global batch (batch_draw)
        eps = batch_draw(lambda n: torch.randn((n, *mean.shape[1:]), device=mean.device, dtype=mean.dtype), len(mean))
        rec = vae.decode(mean + posterior.std * eps).sample.float()
        loss = F.l1_loss(rec, x) if recon_loss == "l1" else F.mse_loss(rec, x)
        loss = loss + kl_weight * posterior.kl().mean() / pixels  # LDM: KL summed per face, here per pixel
        if lpips_net is not None:
            rgb = (lambda t: t.expand(-1, 3, -1, -1)) if size[0] == 1 else (lambda t: t)
            loss = loss + PERCEPTUAL_WEIGHT * lpips_net(rgb(rec), rgb(x)).mean()
        return loss

    options = {"data": [str(Path(p).resolve()) for p in data], "split": split, "size": list(size),
               "block_out_channels": list(block_out_channels), "latent_channels": latent_channels,
               "layers_per_block": layers_per_block, "batch_size": schedule.batch_size, "lr": schedule.lr,
               "kl_weight": kl_weight, "recon_loss": recon_loss, "perceptual": perceptual, "seed": run.seed,
               "limit": run.limit}
    trainer = Trainer(accel, out, {"vae": vae}, schedule.epochs, len(loader), schedule.lr, weight_decay=0.0,
                      fingerprint=options)
    # nothing below draws random numbers before fit(): a resumed run replays the same one
    trainer.begin(resume, "train-vae", {**options, "val_split": val_split, "epochs": schedule.epochs,
                                        "precision": run.precision},
                  data={"train_faces": len(train), "val_faces": len(val_images), "val_source": val_source})

    # 3. after each epoch: val metrics, a reconstruction grid, the scaling factor, the export
    def end_epoch(epoch: int) -> dict[str, Any]:
        rec = reconstruct(vae, val_images)
        target = to_model_range(val_images)
        mse01 = ((rec - target) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)  # per face, in [0, 1] units
        latents = encode_latents(vae, scale_images, scaled=False)
        std = latents.std().item()
        shown = min(8, len(val_images))
        save_grid(torch.cat([target[:shown], rec[:shown]]) / 2 + 0.5, out / "samples" / f"epoch_{epoch + 1:03d}.png",
                  nrow=shown)
        vae.register_to_config(scaling_factor=1.0 / std)
        atomic_save_dir(out / "vae", lambda d: vae.save_pretrained(d, safe_serialization=True))
        return {"val_l1": (rec - target).abs().mean().item(), "val_psnr": (-10 * mse01.log10()).mean().item(),
                "latent_mean": latents.mean().item(), "latent_std": std, "scaling_factor": 1.0 / std}

    trainer.fit(loader, loss_fn, end_epoch)
    accel.print(f"VAE exported to {out / 'vae'}")
    return out / "vae"
