"""The distilled AU estimator: a small CNN that reproduces the MediaPipe AU vector from a face crop.

Why: MediaPipe's landmark + blendshape models are not differentiable and cost ~7 ms a face; AU guidance during
generation needs gradients and speed. ``synfer train-au-estimator`` (:mod:`.distill`) fits a synfer backbone to the
AU intensities and face presence that ``synfer prepare`` wrote; this module loads such a model and serves it both
as an :class:`~synfer.annotate.au.base.AUEstimator` (``estimate``: PIL / uint8 in, numpy out, for ``synfer prepare``)
and as a differentiable ``nn.Module`` (``forward``: [0, 1] tensors in, AU intensities out, for guidance).

A model is an :class:`~synfer.models.classifiers.ExpressionClassifier` folder (``config.json`` + safetensors)
whose outputs are named ``AU01 ... AU43, face_presence`` and whose ``extra["kind"]`` is ``"au-estimator"``; the
AU order is data, checked on load against what the caller asks for.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.assets import KINDS, assets_dir, resolve
from ...models.classifiers import ExpressionClassifier
from ...schema import AUSet, check_same_order
from .base import AUResult, ImageBatch, as_uint8_arrays

#: The output column of the face-presence logit (after the AU columns).
FACE_COLUMN = "face_presence"
#: ``extra["kind"]`` of an AU-estimator config.
KIND = "au-estimator"
class DistilledAUEstimator(nn.Module):
    """AU intensities (and face presence) from face crops with one CNN forward pass.

    Args:
        model: the trained network (outputs ``au_set.names + [face_presence]`` as logits).
        batch_size: faces per forward pass in :meth:`estimate`.

    ``forward(images)`` takes (B, C, H, W) float images in [0, 1] (any size, gray or RGB; the network resizes)
    and returns ``(aus (B, A), face_presence (B,))`` in [0, 1]; gradients flow to the images.
    """

    def __init__(self, model: ExpressionClassifier, batch_size: int = 256, source: str | Path | None = None) -> None:
        super().__init__()
        self.source = None if source is None else Path(source)
        names = list(model.label_names)
        if model.config.extra.get("kind") != KIND or names[-1:] != [FACE_COLUMN]:
            raise ValueError(f"{model.config.architecture} is not an AU estimator (its outputs are {names}; an AU "
                             f"estimator's are AU columns then {FACE_COLUMN!r}, with extra.kind = {KIND!r}).")
        self.model = model.eval()
        self.au_set = AUSet(tuple(names[:-1]))
        self.batch_size = batch_size
        self.timings: dict[str, float] = {}

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path | None = None, au_set: AUSet | None = None,
                        map_location: str | torch.device = "cpu", num_threads: int | None = None,
                        batch_size: int = 256) -> DistilledAUEstimator:
        """Load a folder or bundled name (None: the bundled default); with ``au_set``, refuse a model whose AU
        order differs. ``num_threads`` sets torch's CPU threads (None leaves them)."""
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        path = resolve("au-estimator", path_or_name)
        est = cls(ExpressionClassifier.from_pretrained(path, map_location=map_location), batch_size, source=path)
        if au_set is not None:
            check_same_order("AU", au_set.names, est.au_set.names, "requested AU set", str(path))
        return est

    def describe(self) -> dict[str, object]:
        """What ``synfer prepare`` records in provenance: the estimator, its weights' file and hash, the AU set."""
        import hashlib

        info: dict[str, object] = {"estimator": "distilled", "au_set": list(self.au_set.names)}
        if self.source is not None:
            weights = self.source / "model.safetensors"
            bundled = assets_dir() / KINDS["au-estimator"].folder
            info["model"] = self.source.name if self.source.parent == bundled else str(self.source)
            info["model_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        return info

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(self.model(images).float())
        return p[:, :-1], p[:, -1]

    @torch.no_grad()
    def estimate(self, images: ImageBatch) -> AUResult:
        """The AUEstimator interface: PIL images or a uint8 batch -> AUResult (no pose, no landmarks)."""
        t0 = time.perf_counter()
        arrays = as_uint8_arrays(images)
        c = self.model.config.input_size[0]
        h, w = self.model.config.input_size[1:]
        batch = []
        for a in arrays:  # to the network's mode and size here, so one batch can mix sizes
            if a.ndim == 3 and c == 1:
                a = np.asarray(_pil(a).convert("L"))
            if a.shape[:2] != (h, w):
                a = np.asarray(_pil(a).resize((w, h), _bicubic()))
            batch.append(a[..., None] if a.ndim == 2 else a)
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0 if batch else \
            torch.zeros(0, c, h, w)
        self.timings["preprocess"] = self.timings.get("preprocess", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        device = next(self.model.parameters()).device
        aus, face = [], []
        for chunk in x.split(self.batch_size):
            a, f = self(chunk.to(device))
            aus.append(a.cpu())
            face.append(f.cpu())
        self.timings["network"] = self.timings.get("network", 0.0) + time.perf_counter() - t0
        if not aus:
            return AUResult(np.zeros((0, len(self.au_set)), np.float32), np.zeros(0, np.float32))
        return AUResult(torch.cat(aus).numpy().astype(np.float32), torch.cat(face).numpy().astype(np.float32))


def _pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a)


def _bicubic():
    from PIL import Image

    return Image.Resampling.BICUBIC
