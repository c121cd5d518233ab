"""Training-time augmentation of face crops for expression classifiers."""

from __future__ import annotations

import torch


def train_transform(size: tuple[int, int], strength: str = "standard"):
    """torchvision v2 augmentation for face crops: uint8 (C, H, W) -> float (C, H, W) in [0, 1].

    ``standard``: random resized crop (80-100% of the face), horizontal flip, small rotation, brightness and
    contrast jitter, random erasing. ``none``: only the conversion.
    """
    from torchvision.transforms import v2

    to_float = v2.ToDtype(torch.float32, scale=True)
    if strength == "none":
        return to_float
    if strength != "standard":
        raise ValueError(f"augment must be 'standard' or 'none', got {strength!r}")
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.RandomRotation(10)], p=0.5),
        v2.ColorJitter(brightness=0.3, contrast=0.3),
        to_float,
        v2.RandomErasing(p=0.25, scale=(0.02, 0.12), value=0.5),
    ])
