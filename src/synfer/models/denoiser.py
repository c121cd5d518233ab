"""The denoiser seam: how synfer calls and reads the network that denoises, whatever its family.

The pipeline, semantic guidance, DDIM inversion, FERAnno's feature hooks, the AU adapter's installation and the
trainers never call a UNet directly: they call :func:`denoise` (latents, timestep, conditioning tokens ->
prediction) and ask :func:`family_of` what to read (the blocks whose outputs are multi-scale features, the
latent size). A family is one entry of :data:`FAMILIES`; a new base model (an SDXL UNet with its added
conditioning, a diffusion transformer) is a new entry, not a branch in the callers.

Every family keeps diffusers' attention-processor API (``attn_processors`` / ``set_attn_processor``), which is
what the AU adapter swaps its decoupled cross-attention into.
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
    """

    name: str
    forward: Callable[..., torch.Tensor]
    feature_blocks: Callable[[nn.Module], list[nn.Module]]
    load: Callable[[], type]
    text_width: Callable[[nn.Module], int]
    token_width: Callable[[nn.Module], int]


def _unet_forward(net: nn.Module, latents: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor,
                  **added: Any) -> torch.Tensor:
    return net(latents, timestep, encoder_hidden_states=cond, return_dict=False, **added)[0]


def _unet_class() -> type:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel


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


def family_of(net: nn.Module) -> Family:
    """The family of a denoiser (by its class or, for a compiled or wrapped one, its original's)."""
    for cls in type(getattr(net, "_orig_mod", net)).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise ValueError(f"{type(net).__name__} is not a denoiser synfer knows; supported: {', '.join(FAMILIES)} "
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
    if name not in FAMILIES:
        raise ValueError(f"{config}: a {name} denoiser; synfer supports {', '.join(FAMILIES)}.")
    return FAMILIES[name].load().from_pretrained(checkpoint, subfolder=subfolder, use_safetensors=True, **kwargs)


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
