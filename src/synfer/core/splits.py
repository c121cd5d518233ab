"""Data for expression classifiers: dataset-folder splits in memory, mixes of several folders, augmentation.

Faces here are small (48-112 px), so a split is decoded once into a uint8 tensor and kept in memory; an epoch is
then a list of indices planned by :class:`MixSampler` (which folder contributes how many faces, optionally
class-balanced), and augmentation runs per face with torchvision v2 transforms.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .batching import decode_image, stack_nchw
from .dataset import DatasetError, DatasetFolder


@dataclass
class LoadedSplit:
    """One split of one dataset folder, decoded.

    Attributes:
        images: (N, C, H, W) uint8.
        probs: (N, K) float32 soft labels in ``expressions`` order (one-hot where only a hard label exists).
        labels: (N,) int64 hard labels (the record's ``expression``).
        ids: record ids.
        expressions: label order.
        name: ``"<folder>:<split>"`` for messages and logs.
    """

    images: torch.Tensor
    probs: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    expressions: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return len(self.ids)


def load_split(
    path: str | Path,
    split: str,
    expressions: Sequence[str] | None = None,
    input_size: tuple[int, int, int] | None = None,
    limit: int | None = None,
) -> LoadedSplit:
    """Decode the labelled records of one split.

    Args:
        path: dataset folder.
        split: ``train`` / ``val`` / ``test`` / any split name in the folder.
        expressions: if given, the folder's expression order must equal it (else ``OrderMismatchError``).
        input_size: (C, H, W) to convert and resize to; default: the first image's size and mode.
        limit: keep at most this many records (the first ones, for quick runs).

    Raises:
        DatasetError: the split has no labelled record.
    """
    folder = DatasetFolder(path, expect_expressions=expressions)
    table = folder.select_split(split)
    rows = [r for r in table.select(["id", "image", "expression", "label_probs"]).to_pylist()
            if r["expression"] is not None or r["label_probs"] is not None]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        have = sorted(set(folder.column("split")))
        raise DatasetError(f"{path}: no labelled records in split {split!r} (splits present: {have}).")
    k = len(folder.expressions)
    if input_size is None:
        first = folder.load_image(rows[0]["image"])
        input_size = (1 if first.mode == "L" else 3, first.height, first.width)
    c, h, w = input_size
    mode = "L" if c == 1 else "RGB"
    with ThreadPoolExecutor(max_workers=4) as pool:  # PNG decoding releases the GIL
        arrays = list(pool.map(lambda r: decode_image(folder.image_path(r["image"]), mode, (h, w)), rows))
    images = stack_nchw(arrays)
    probs = torch.zeros(len(rows), k)
    labels = torch.zeros(len(rows), dtype=torch.long)
    for i, r in enumerate(rows):
        if r["label_probs"] is not None:
            probs[i] = torch.tensor(r["label_probs"])
        label = folder.expressions.index(r["expression"]) if r["expression"] is not None else int(probs[i].argmax())
        if r["label_probs"] is None:
            probs[i, label] = 1.0
        labels[i] = label
    return LoadedSplit(images, probs, labels, [r["id"] for r in rows], folder.expressions, f"{path}:{split}")


def class_counts(labels: torch.Tensor, k: int) -> np.ndarray:
    return np.bincount(labels.numpy(), minlength=k)


class MixSampler(Sampler[int]):
    """Plans each epoch over several concatenated sources.

    Args:
        sizes: number of faces in each source (they are concatenated in this order).
        labels: per source, its hard labels (for class balancing).
        ratios: share of each source in an epoch (normalised), or None.
        counts: fixed faces per source per epoch, or None. With neither, every face of every source once.
        epoch_size: faces per epoch with ``ratios`` (default: the total size).
        balanced: within each source, draw faces with probability inversely proportional to their class
            frequency (with replacement), so each class is seen about equally often.
        balance_power: with ``balanced``, the probability goes as frequency ** -balance_power: 1 sees every class
            equally often, 0.5 (square-root balancing) lifts rare classes without repeating their few faces as
            often (what a generator that must also learn faces, not only labels, wants).
        seed: base seed; epoch ``e`` uses ``seed + e``, so a resumed run replays the same epochs.
    """

    def __init__(self, sizes: Sequence[int], labels: Sequence[torch.Tensor], ratios: Sequence[float] | None = None,
                 counts: Sequence[int] | None = None, epoch_size: int | None = None, balanced: bool = False,
                 seed: int = 0, balance_power: float = 1.0) -> None:
        if ratios is not None and counts is not None:
            raise ValueError("Give ratios or counts, not both.")
        for name, v in (("ratios", ratios), ("counts", counts)):
            if v is not None and len(v) != len(sizes):
                raise ValueError(f"{len(v)} {name} for {len(sizes)} data folders; give one per folder.")
            if v is not None and min(v) < 0:
                raise ValueError(f"{name} must be non-negative; got {list(v)}.")
        if not 0 <= balance_power <= 1:
            raise ValueError(f"balance_power must be in [0, 1]; got {balance_power}.")
        self.sizes, self.labels, self.balanced, self.seed, self.epoch = list(sizes), list(labels), balanced, seed, 0
        self.balance_power = float(balance_power)
        if counts is not None:
            self.per_source = [int(c) for c in counts]
        elif ratios is not None:
            total = float(sum(ratios))
            if total <= 0:
                raise ValueError("ratios must not all be zero.")
            n = epoch_size or sum(sizes)
            self.per_source = [int(round(n * r / total)) for r in ratios]
        else:
            self.per_source = list(sizes)
        self.offsets = np.cumsum([0] + self.sizes[:-1]).tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, epoch: int) -> np.ndarray:
        """Indices (into the concatenation) of one epoch, shuffled."""
        rng = np.random.default_rng(self.seed + epoch)
        parts = []
        for size, want, offset, labels in zip(self.sizes, self.per_source, self.offsets, self.labels, strict=True):
            if want == 0:
                continue
            if self.balanced:
                freq = np.bincount(labels.numpy())
                p = freq[labels.numpy()].astype(np.float64) ** -self.balance_power
                idx = rng.choice(size, want, replace=True, p=p / p.sum())
            elif want <= size:
                idx = rng.permutation(size)[:want]
            else:  # more than the folder holds: every face once, the rest drawn again
                idx = np.concatenate([rng.permutation(size), rng.choice(size, want - size, replace=True)])
            parts.append(idx + offset)
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return order[rng.permutation(len(order))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.plan(self.epoch).tolist())

    def __len__(self) -> int:
        return sum(self.per_source)


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


class FaceDataset(Dataset):
    """Concatenated loaded splits with a transform; items are ``(image, soft label, hard label)``."""

    def __init__(self, splits: Sequence[LoadedSplit], transform=None) -> None:
        self.images = torch.cat([s.images for s in splits])
        self.probs = torch.cat([s.probs for s in splits])
        self.labels = torch.cat([s.labels for s in splits])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.images[i]
        x = self.transform(x) if self.transform is not None else x.float() / 255.0
        return x, self.probs[i], self.labels[i]
