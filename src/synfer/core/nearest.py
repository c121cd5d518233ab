"""Nearest neighbours of faces among other faces: the privacy audit's and the near-copy filter's arithmetic."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def nearest(queries: np.ndarray | torch.Tensor, keys: np.ndarray | torch.Tensor, chunk: int = 2048
            ) -> tuple[np.ndarray, np.ndarray]:
    """For each query row (N, D), the Euclidean distance to its nearest key row (M, D) and that row's index."""
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float32)
    k = torch.as_tensor(np.asarray(keys), dtype=torch.float32)
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1] or not len(k):
        raise ValueError(f"nearest needs (N, D) queries and (M, D) keys with M > 0; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}.")
    k2 = (k * k).sum(1)
    dist, idx = [], []
    for part in q.split(chunk):
        d2 = (part * part).sum(1, keepdim=True) + k2[None] - 2 * part @ k.T
        best, where = d2.min(1)
        dist.append(best.clamp_min(0).sqrt())
        idx.append(where)
    return torch.cat(dist).numpy(), torch.cat(idx).numpy()


def pixel_rows(images: torch.Tensor) -> np.ndarray:
    """uint8 faces (N, C, H, W) -> (N, C*H*W) float32 in [0, 1]."""
    return (images.reshape(len(images), -1).float() / 255.0).numpy()


def exact_copies(images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """(N,) bool: which faces are byte-identical to a face of ``reference`` (both uint8 (N, C, H, W))."""
    seen = {hashlib.sha1(x.numpy().tobytes()).digest() for x in reference}
    return np.array([hashlib.sha1(x.numpy().tobytes()).digest() in seen for x in images], dtype=bool)


def near_copy_mask(images: torch.Tensor, train_images: torch.Tensor, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask (N,) of faces whose nearest training face in pixels is closer than ``distance``, the distances)."""
    d, _ = nearest(pixel_rows(images), pixel_rows(train_images))
    return d < distance, d
