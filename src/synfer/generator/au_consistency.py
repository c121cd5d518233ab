"""AU consistency: a reward on the one-step clean estimate for training the AU adapter.

The denoising loss alone teaches the adapter little about AUs: most of a face's noise is explained by the prompt
and the frozen UNet, so the AU tokens' share of the gradient is small (the bundled v1 adapter reached a MediaPipe
AU r of 0.47 with it). Here, for the faces of a batch noised to a low timestep (``t < max_timestep``, where the
one-step estimate ``x0_hat = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)`` is already a recognisable face), ``x0_hat``
is decoded by the frozen VAE and read by the frozen differentiable AU estimator (the distilled CNN of
:mod:`synfer.annotate.au.distilled`), and the binary cross-entropy between its reading and the face's own AU targets
is added to the loss, in the manner of ControlNet++'s reward-consistency loss (Li et al., 2024).

The estimator that trains the adapter is a student of MediaPipe, the estimator that judges AU control in the
benchmarks; they are different networks, but not independent ones, and the docs say so next to every figure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .guidance import predict_x0


class AUConsistency:
    """The AU term of adapter training.

    Args:
        estimator: a :class:`~synfer.annotate.au.distilled.DistilledAUEstimator` in the adapter's AU order (the caller
            checks); frozen here. Its logits are read, so the BCE is computed from logits (stable, and allowed
            under CUDA autocast, which refuses ``binary_cross_entropy`` on probabilities).
        decode: latents (B, c, h, w) -> images (B, C, H, W) in [0, 1] (``SynferPipeline.decode_latents``), frozen.
        scheduler: the training noise schedule (for ``x0_hat``).
        max_timestep: only faces noised below this timestep count (values above the schedule's length let every
            face count).
    """

    def __init__(self, estimator: nn.Module, decode: Callable[[torch.Tensor], torch.Tensor], scheduler: Any,
                 max_timestep: int = 400) -> None:
        if max_timestep <= 0:
            raise ValueError(f"au_loss_max_timestep must be > 0; got {max_timestep}.")
        self.estimator = estimator.eval().requires_grad_(False)
        self.decode, self.scheduler, self.max_timestep = decode, scheduler, int(max_timestep)
        self.last_faces = 0  # faces that counted in the last call (for a per-face running mean)

    def per_face(self, noisy: torch.Tensor, pred: torch.Tensor, timesteps: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
        """BCE (B,) between the estimator's AUs of the decoded ``x0_hat`` and ``targets`` (B, A) in [0, 1]."""
        x0 = predict_x0(self.scheduler, noisy.float(), pred.float(), timesteps)
        with torch.autocast(x0.device.type, enabled=False):  # fp32 from here: decoder, estimator and the BCE
            images = self.decode(x0.float()).float()
            logits = self.estimator.model(images).float()[:, :-1]  # the AU columns; face presence is last
            return F.binary_cross_entropy_with_logits(logits, targets.to(logits.device).float(),
                                                      reduction="none").mean(1)

    def __call__(self, noisy: torch.Tensor, pred: torch.Tensor, timesteps: torch.Tensor, targets: torch.Tensor,
                 use: torch.Tensor) -> torch.Tensor:
        """Mean BCE over the faces with ``use`` (B,) bool and a timestep below the limit; 0 (with a graph) if none.

        Only those faces go through the decoder and the estimator; their number is left in ``last_faces``.
        """
        rows = torch.nonzero(use.to(timesteps.device) & (timesteps < self.max_timestep)).flatten()
        self.last_faces = len(rows)
        if len(rows) == 0:
            return pred.sum() * 0.0
        return self.per_face(noisy[rows], pred[rows], timesteps[rows], targets[rows]).mean()
