"""In-memory data helpers shared by the training loops (classifiers, VAE, generator, adapter).

Faces in synfer are small, so every trainer decodes its split once into a uint8 tensor and lets a DataLoader
plan index batches over it; augmentation and encoding then run on whole batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def decode_image(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """Decode one image file to uint8 (H, W, C), converted to ``mode`` ("L" or "RGB") and resized (bicubic) to
    ``size`` = (H, W)."""
    with Image.open(path) as im:
        im = im.convert(mode)
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        a = np.asarray(im, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


class IndexDataset(torch.utils.data.Dataset):
    """0..n-1: lets a DataLoader (and accelerate's sharding) drive a sampler while the data stay in tensors."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def stack_nchw(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, C) arrays -> one (N, C, H, W) tensor with plain NCHW strides.

    ``permute(...).contiguous()`` is not enough for one channel: such a tensor already counts as contiguous and keeps
    channels-last strides, convolutions then run channels-last, and torch 2.14's oneDNN convolution backward on
    the CPU corrupts the heap with more than one thread (a crash in training, seen with a batch of 5).
    """
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
