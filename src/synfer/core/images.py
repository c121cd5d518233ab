"""Images in and out of the tools: PIL faces as model input batches, and the files written for people to look at
(sample grids, previews)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def pil_batch(images: Sequence[Image.Image], channels: int, height: int, width: int) -> torch.Tensor:
    """PIL images -> (B, C, H, W) floats in [0, 1] at a model's input size and channels (1: gray, 3: RGB)."""
    mode = "L" if channels == 1 else "RGB"
    arrays = [np.asarray(im.convert(mode).resize((width, height), Image.BICUBIC), dtype=np.float32) / 255
              for im in images]
    batch = torch.from_numpy(np.stack(arrays))
    return batch[:, None] if channels == 1 else batch.permute(0, 3, 1, 2)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Images (B, C, H, W) in [0, 1] -> one PNG grid (gray for C = 1), written atomically."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if images.shape[1] == 1 else pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
