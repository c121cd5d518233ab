"""Layout initialisation (SynFER §3): start sampling from a real face's DDIM inversion instead of pure noise.

The face is encoded by the VAE, ``z_0``, and run *up* the deterministic DDIM trajectory of the pipeline's own
schedule under a source condition (by default the class-agnostic "" prompt with null AU tokens, no guidance)::

    z_{t'} = sqrt(a_{t'}) * (z_t - sqrt(1 - a_t) * e) / sqrt(a_t) + sqrt(1 - a_{t'}) * e,   e = eps(z_t, t', c)

from clean (a = 1) to the step where sampling will enter (``strength`` of the schedule). The pipeline then denoises
from there under the target prompt and AUs (``SynferPipeline.__call__(latents=..., strength=...)``): the pose,
identity and lighting of the real face are kept to the degree ``1 - strength``, the expression follows the target.
``synfer edit`` is the same mechanism applied to given faces.

Only the steps that sampling will run are inverted (``round(steps * strength)`` UNet calls, one row each), so an
inverted start costs less than the sampling it replaces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..core.dataset import DatasetError, DatasetFolder
from ..core.images import pil_batch
from ..core.runtime import autocast, resolve_precision
from ..models.denoiser import denoise

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def to_pipeline_images(pipe: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL faces -> (B, C, H, W) float in [0, 1] at the VAE's size and channels (gray or RGB)."""
    size = int(pipe.vae.config.sample_size)
    return pil_batch(images, pipe.vae.config.in_channels, size, size)


@torch.no_grad()
def encode_images(pipe: Any, images: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] -> scaled VAE latents (B, c, H / f, W / f) (the posterior mean: deterministic)."""
    vae = pipe.vae
    x = images.to(pipe._execution_device, vae.dtype) * 2 - 1
    z = vae.encode(x).latent_dist.mean
    if vae.config.get("shift_factor") is not None:
        z = z - vae.config.shift_factor
    return z * vae.config.scaling_factor


@torch.no_grad()
def invert(pipe: Any, images: torch.Tensor, num_inference_steps: int | None = None, strength: float = 0.7,
           prompt: str | Sequence[str] = "", precision: str = "fp32") -> torch.Tensor:
    """DDIM-invert faces to where sampling at ``strength`` enters the pipeline's schedule.

    Args:
        pipe: a SynferPipeline (any variance-preserving scheduler; its timesteps are used).
        images: (B, C, H, W) in [0, 1] at the VAE's size (see :func:`to_pipeline_images`).
        num_inference_steps: the sampling steps the result will be used with (None: the pipeline's default).
        strength: in (0, 1]; the share of the schedule that sampling will run.
        prompt: the source condition ("" = class-agnostic), one string or one per face.
        precision: autocast of the UNet calls (:mod:`synfer.core.runtime`). fp32 by default, whatever the sampling
            runs in: an inversion runs the sampler's ODE backwards and its errors grow step by step (in bf16 a
            random test UNet's inversion lands farther from its source than pure noise does), and it is the short
            part of the work (one row, ``strength`` of the steps).

    Returns:
        latents (B, c, h, w) for ``pipe(..., latents=result, strength=strength, num_inference_steps=...)``.
    """
    steps = num_inference_steps or pipe.generation_defaults()["num_inference_steps"]
    z = encode_images(pipe, images)
    start = pipe.first_step(steps, strength, z)
    sched = pipe.scheduler
    sched.set_timesteps(steps, device=z.device)
    path = sched.timesteps[start:].flip(0)  # increasing noise: the kept steps, smallest first
    prompts = [prompt] * len(z) if isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(z):
        raise ValueError(f"{len(prompts)} source prompts for {len(z)} faces; give one, or one per face.")
    embeds, _ = pipe.encode_prompt(prompts, z.device)
    _, null = pipe.encode_aus(None, len(z), z.device)
    cond = embeds if null is None else torch.cat([embeds, null], dim=1)
    alphas = sched.alphas_cumprod.to(z.device, torch.float32)
    adapter = pipe.au_adapter
    context = nullcontext() if adapter is None or adapter.installed_on(pipe.unet) else adapter.applied_to(pipe.unet)
    a_prev = torch.tensor(1.0, device=z.device)
    z = z.float()
    precision = resolve_precision(precision, z.device)
    with context:
        for t in path:
            a = alphas[int(t)]
            with autocast(z.device, precision):
                out = denoise(pipe.unet, z.to(pipe.unet.dtype), t, cond).float()
            if sched.config.prediction_type == "v_prediction":  # v at the target level, read as eps
                eps = a.sqrt() * out + (1 - a).sqrt() * z
            else:
                eps = out
            x0 = (z - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
            z = a.sqrt() * x0 + (1 - a).sqrt() * eps
            a_prev = a
    return z.to(pipe.unet.dtype)


def list_faces(inputs: Sequence[str | Path], split: str | None = None, limit: int | None = None
               ) -> list[tuple[str, Callable[[], Image.Image]]]:
    """Faces to edit or to lay out from, not yet decoded: image files, folders of images, or synfer dataset
    folders (their records of ``split``, all splits by default). Returns (name, load) pairs; names are file stems
    or record ids, ``load()`` reads the image."""
    found: list[tuple[str, Callable[[], Image.Image]]] = []
    for raw in inputs:
        path = Path(raw)
        if (path / "dataset.json").is_file():
            folder = DatasetFolder(path)
            found += [(rec.id, partial(folder.load_image, rec.image)) for rec in folder.records(split)]
            continue
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        for f in files:
            if not f.is_file():
                raise DatasetError(f"{f}: no such image file, image folder or dataset folder.")
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"{f}: not an image ({', '.join(IMAGE_SUFFIXES)}) nor a dataset folder.")
            found.append((f.stem, partial(_open_image, f)))
    if not found:
        raise DatasetError(f"No faces found in {[str(p) for p in inputs]}"
                           + (f" (split {split!r})" if split else "") + ".")
    return found[:limit]


def align_faces(faces: Sequence[tuple[str, Image.Image]], model_path: str | Path, size: int = 128
                ) -> list[tuple[str, Image.Image, Any]]:
    """The faces of ordinary photos found and aligned (:class:`synfer.annotate.align.FaceAligner`): (name, aligned
    crop, :class:`~synfer.annotate.align.Alignment`) for each photo with a face. Photos without one are named in a
    warning, and none at all is an error."""
    import warnings

    from ..annotate.align import FaceAligner

    found, missing = [], []
    with FaceAligner(model_path, size=size) as aligner:
        for name, photo in faces:
            hit = aligner.align(photo)
            if hit is None:
                missing.append(name)
            else:
                found.append((name, hit[0], hit[1]))
    if not found:
        raise DatasetError(f"No face found in any of the {len(faces)} images ({', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}); give photos with a visible face.")
    if missing:
        warnings.warn(f"No face found in {len(missing)} of {len(faces)} images, left out: {', '.join(missing[:10])}"
                      f"{' ...' if len(missing) > 10 else ''}.", stacklevel=2)
    return found


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.copy()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the image ({e}).") from e


def read_faces(inputs: Sequence[str | Path], split: str | None = None, limit: int | None = None
               ) -> list[tuple[str, Image.Image]]:
    """:func:`list_faces`, decoded: (name, image) pairs (a bad file fails here, before any work)."""
    return [(name, load()) for name, load in list_faces(inputs, split, limit)]
