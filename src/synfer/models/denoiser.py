"""The denoiser seam: how synfer calls and reads the network that denoises, whatever its family.

The pipeline, semantic guidance, DDIM inversion, FERAnno's feature hooks, the AU adapter's installation and the
trainers never call a UNet directly: they call :func:`denoise` (latents, timestep, conditioning tokens ->
prediction) and ask :func:`family_of` what to read (the blocks whose outputs are multi-scale features, the
latent size). A family is one entry of :data:`FAMILIES`; a new base model (an SDXL UNet with its added
conditioning, a diffusion transformer) is a new entry, not a branch in the callers.

Every family keeps diffusers' attention-processor API (``attn_processors`` / ``set_attn_processor``), which is
what the AU adapter swaps its decoupled cross-attention into.

Conditioning is one token tensor everywhere (guidance rows stack it, semantic guidance differentiates it, the AU
adapter appends its tokens to it). A family whose denoiser takes more than tokens packs the rest into it: SDXL's
pooled text embedding travels as token 0 (zero-padded to the token width, see
:class:`~synfer.models.text_encoders.SDXLTextEncoder`) and its forward unpacks it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    """How to call and read one family of denoisers.

    Attributes:
        name: the diffusers class name (``_class_name`` in a checkpoint's config).
        forward: ``(net, latents (B, C, h, w), timestep, cond (B, L, D), **added) -> prediction (B, C, h, w)``.
        feature_blocks: ``net -> the modules whose outputs FERAnno reads`` (coarse to fine).
        load: the class that reads the family's checkpoints (``from_pretrained``).
        text_width: ``net -> D``, the width of the text tokens it takes (what the text encoder must give).
        token_width: ``net -> D'``, the width of the tokens its cross-attention layers attend to (the AU adapter's
            tokens): the text width for a UNet, the inner width for a transformer that projects its captions.
        accepts: ``net -> bool``, for families sharing a class (an SDXL UNet is a ``UNet2DConditionModel`` whose
            config adds ``text_time`` conditioning); the first family in :data:`FAMILIES` that accepts wins.
    """

    name: str
    forward: Callable[..., torch.Tensor]
    feature_blocks: Callable[[nn.Module], list[nn.Module]]
    load: Callable[[], type]
    text_width: Callable[[nn.Module], int]
    token_width: Callable[[nn.Module], int]
    accepts: Callable[[nn.Module], bool] = lambda net: True


def _unet_forward(net: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor,
                  **added: Any) -> torch.Tensor:
    return net(latents, timestep, encoder_hidden_states=cond, return_dict=False, **added)[0]


def _unet_class() -> type:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel


#: SDXL's VAE downsamples 8x: the time ids (original and target size) are the latents' size times this.
SDXL_VAE_SCALE = 8


def is_sdxl(net: nn.Module) -> bool:
    """An SDXL-style UNet: pooled text and size/crop "time ids" added to the timestep embedding."""
    return getattr(net.config, "addition_embed_type", None) == "text_time"


def sdxl_pooled_width(net: nn.Module) -> int:
    """P, the width of the pooled text embedding an SDXL UNet adds (its projection input less 6 time ids)."""
    cfg = net.config
    return int(cfg.projection_class_embeddings_input_dim) - 6 * int(cfg.addition_time_embed_dim)


def sdxl_time_ids(latents: torch.Tensor) -> torch.Tensor:
    """(B, 6): original size, crop top-left, target size in pixels, for an uncropped face at the latents' size
    (what diffusers' SDXL pipeline passes by default)."""
    h, w = (SDXL_VAE_SCALE * s for s in latents.shape[-2:])
    return torch.tensor([h, w, 0, 0, h, w], dtype=latents.dtype, device=latents.device).expand(len(latents), 6)


def _sdxl_forward(net: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor,
                  **added: Any) -> torch.Tensor:
    """``cond`` (B, 1 + L, D): token 0 the pooled embedding (its first P values), then the L text tokens (and any
    AU tokens the adapter appended)."""
    pooled = cond[:, 0, :sdxl_pooled_width(net)]
    extra = {"text_embeds": pooled, "time_ids": sdxl_time_ids(latents), **added.pop("added_cond_kwargs", {})}
    return net(latents, timestep, encoder_hidden_states=cond[:, 1:], added_cond_kwargs=extra, return_dict=False,
               **added)[0]


def _pixart_forward(net: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor,
                    **added: Any) -> torch.Tensor:
    t = torch.as_tensor(timestep, device=latents.device)
    t = t.expand(len(latents)) if t.ndim == 0 else t  # the transformer embeds one timestep per face
    out = net(latents, encoder_hidden_states=cond, timestep=t,
              added_cond_kwargs=added.pop("added_cond_kwargs", {"resolution": None, "aspect_ratio": None}),
              return_dict=False, **added)[0]
    c = latents.shape[1]
    return out[:, :c] if out.shape[1] == 2 * c else out  # a learned-sigma checkpoint: its first half predicts


def _pixart_class() -> type:
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel


FAMILIES: dict[str, Family] = {
    # SDXL: two text encoders' tokens concatenated (2048 wide), pooled embedding + time ids added to the timestep
    "SDXL": Family(
        "UNet2DConditionModel", _sdxl_forward, lambda net: list(net.up_blocks), _unet_class,
        text_width=lambda net: int(net.config.cross_attention_dim),
        token_width=lambda net: int(net.config.cross_attention_dim), accepts=is_sdxl),
    "UNet2DConditionModel": Family(
        "UNet2DConditionModel", _unet_forward, lambda net: list(net.up_blocks), _unet_class,
        text_width=lambda net: int(net.config.cross_attention_dim),
        token_width=lambda net: int(net.config.cross_attention_dim)),
    # a PixArt-style diffusion transformer: text cross-attention in every block, captions projected inside
    "PixArtTransformer2DModel": Family(
        "PixArtTransformer2DModel", _pixart_forward, lambda net: list(net.transformer_blocks), _pixart_class,
        text_width=lambda net: int(net.config.caption_channels),
        token_width=lambda net: int(net.config.cross_attention_dim)),
}


def _class_names() -> set[str]:
    return {f.name for f in FAMILIES.values()}


def family_key(family: Family) -> str:
    """The family's key in :data:`FAMILIES` (``SDXL`` for an SDXL UNet, else its class name)."""
    return next(k for k, f in FAMILIES.items() if f is family)


def family_of(net: nn.Module) -> Family:
    """The family of a denoiser (by its class or, for a compiled or wrapped one, its original's)."""
    base = getattr(net, "_orig_mod", net)
    for cls in type(base).__mro__:
        for family in FAMILIES.values():
            if family.name == cls.__name__ and family.accepts(base):
                return family
    known = ", ".join(sorted(_class_names()))
    raise ValueError(f"{type(net).__name__} is not a denoiser synfer knows; supported: {known} "
                     "(add a Family to synfer.models.denoiser.FAMILIES for another).")


def denoise(net: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor,
            **added: Any) -> torch.Tensor:
    """The denoiser's prediction (noise, v or sample, as its scheduler says), (B, C, h, w), for latents
    (B, C, h, w) at ``timestep`` (one, or (B,) per face) under conditioning tokens ``cond`` (B, L, D)."""
    return family_of(net).forward(net, latents, timestep, cond, **added)


def load_denoiser(checkpoint: str, subfolder: str | None = None, **kwargs: Any) -> nn.Module:
    """A denoiser from a diffusers folder or hub id, its class read from the config's ``_class_name``."""
    import json
    from pathlib import Path

    config = Path(checkpoint) / (subfolder or "") / "config.json"
    name = json.loads(config.read_text()).get("_class_name") if config.is_file() else "UNet2DConditionModel"
    family = next((f for f in FAMILIES.values() if f.name == name), None)
    if family is None:
        raise ValueError(f"{config}: a {name} denoiser; synfer supports {', '.join(sorted(_class_names()))}.")
    return family.load().from_pretrained(checkpoint, subfolder=subfolder, use_safetensors=True, **kwargs)


def build_mini_unet(sample_size: int, channels: int, block_out_channels: Sequence[int], layers_per_block: int,
                    attention_head_dim: int, cross_attention_dim: int, attention_levels: Sequence[int] | None,
                    norm_num_groups: int) -> nn.Module:
    """The mini generator's UNet: cross-attention at ``attention_levels`` (default all but the first, the widest
    in pixels and the costliest) and in the middle block."""
    n = len(block_out_channels)
    levels = set(range(1, n) if attention_levels is None else attention_levels) or {n - 1}
    if not levels <= set(range(n)):
        raise ValueError(f"attention_levels {sorted(levels)} must lie in 0..{n - 1} (one per block).")
    down = tuple("CrossAttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(n)))
    return _unet_class()(sample_size=sample_size, in_channels=channels, out_channels=channels,
                         block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                         down_block_types=down, up_block_types=up, cross_attention_dim=cross_attention_dim,
                         attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups)
