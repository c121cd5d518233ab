"""Semantic guidance (SynFER §3): steer the text embedding toward the target expression in late sampling steps.

At a guided step the clean sample is predicted from the current latents,
``x0_hat = (x_t - sqrt(1 - a_t) * eps(x_t, t, c_text, c_au)) / sqrt(a_t)``, decoded, scored by an expression
classifier, and the conditional text embedding moves down the normalised gradient of the cross-entropy to the
target: ``c_text <- c_text - lambda * ||c_text|| * g / ||g||`` (per face; the paper prints "+", but lowering a loss
goes against its gradient). The step is relative to the embedding's own norm so one ``lambda`` means the same for
MiniLM and CLIP embeddings. The moved embedding is carried into every later step (the pipeline keeps what a
callback returns). Optionally the differentiable AU estimator adds ``au_weight`` x the BCE between its reading of
``x0_hat`` and the target AUs to the loss.

It is a pipeline callback (``callback_on_step_end``), not a copy of the sampler: after step ``i`` the latents sit at
the next timestep, so the guidance of step ``i + 1`` is computed there with one extra UNet forward/backward. The
forward runs in the pipeline call's precision (``pipe.active_precision``); the loss, the gradient and the step on
the embedding are fp32.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.runtime import autocast
from ..models.denoiser import denoise


def predict_x0(scheduler: Any, latents: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor | int
               ) -> torch.Tensor:
    """The clean latents implied by a noise (or v) prediction at timestep ``t`` (one, or (B,) per face);
    (B, C, h, w) -> (B, C, h, w)."""
    t = torch.as_tensor(t, device=latents.device).long()
    a = scheduler.alphas_cumprod.to(latents.device)[t].to(latents.dtype)
    a = a.view(-1, *[1] * (latents.ndim - 1)) if a.ndim else a
    if scheduler.config.prediction_type == "v_prediction":
        return a.sqrt() * latents - (1 - a).sqrt() * model_output
    if scheduler.config.prediction_type == "sample":
        return model_output
    return (latents - (1 - a).sqrt() * model_output) / a.sqrt()


def guided_embedding(loss: torch.Tensor, embeds: torch.Tensor, step: float) -> torch.Tensor:
    """``embeds - step * ||embeds|| * g / ||g||`` per face, g = d loss / d embeds; (B, L, D) -> (B, L, D)."""
    (g,) = torch.autograd.grad(loss, embeds)
    g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    e_norm = embeds.detach().flatten(1).norm(dim=1).view(-1, 1, 1)
    return (embeds - step * e_norm * g / g_norm).detach()


@contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Parameters that do not require gradients while inside (restored after): the backward pass then computes
    only the gradient to the embedding, not the weights' (measured ~15% off a guided step on CPU)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


class SemanticGuidance:
    """A ``callback_on_step_end`` that applies semantic guidance in a window of late steps.

    Args:
        classifier: maps images (B, C, H, W) in [0, 1] to logits (B, K) (an ``ExpressionClassifier``); frozen here.
        targets: (B,) target class indices in the classifier's label order, one per prompt of the call.
        scale: ``lambda``, the step relative to the embedding norm (0.05 moves it by 5% per guided step).
        window: fractions (start, end) of the sampling steps where guidance acts, e.g. (0.6, 1.0) = the last 40%.
        au_estimator: optional differentiable AU model ``images -> (aus (B, A), face (B,))``.
        au_targets: (B, A) target AUs in the estimator's order (with ``au_estimator``).
        au_weight: weight of the AU term.
        ce_weight: weight of the expression term (0 with ``au_weight`` > 0 guides on AUs alone).
    """

    tensor_inputs: Sequence[str] = ("latents", "prompt_embeds", "au_tokens")

    def __init__(self, classifier: nn.Module, targets: torch.Tensor, scale: float = 0.05,
                 window: tuple[float, float] = (0.6, 1.0), au_estimator: nn.Module | None = None,
                 au_targets: torch.Tensor | None = None, au_weight: float = 0.0, ce_weight: float = 1.0) -> None:
        if not 0.0 <= window[0] <= window[1] <= 1.0:
            raise ValueError(f"window must be (start, end) fractions with 0 <= start <= end <= 1; got {window}.")
        if au_weight and (au_estimator is None or au_targets is None):
            raise ValueError("au_weight needs au_estimator and au_targets.")
        self.classifier = classifier.eval().requires_grad_(False)
        self.targets = targets.long()
        self.scale, self.window = float(scale), window
        self.au_estimator = None if au_estimator is None else au_estimator.eval().requires_grad_(False)
        self.au_targets, self.au_weight, self.ce_weight = au_targets, float(au_weight), float(ce_weight)
        self.losses: list[float] = []  # the guidance loss at each guided step (mean over faces), for inspection

    def guided_steps(self, num_steps: int) -> set[int]:
        """Indices of the steps whose model input gets guidance (never step 0: guidance runs after a step)."""
        lo, hi = int(round(self.window[0] * num_steps)), int(round(self.window[1] * num_steps))
        return {i for i in range(max(1, lo), min(num_steps, hi))}

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Cross-entropy to the targets (+ the AU term) of decoded images (B, C, H, W) in [0, 1]."""
        loss = self.ce_weight * F.cross_entropy(self.classifier(images).float(), self.targets.to(images.device))
        if self.au_weight:
            aus, _ = self.au_estimator(images)
            loss = loss + self.au_weight * F.binary_cross_entropy(aus.float().clamp(1e-6, 1 - 1e-6),
                                                                   self.au_targets.to(aus.device).float())
        return loss

    def __call__(self, pipe: Any, i: int, t: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
        timesteps = pipe.scheduler.timesteps
        nxt = i + 1
        if nxt not in self.guided_steps(len(timesteps)):
            return {}
        t_next = timesteps[nxt]
        latents = kwargs["latents"]
        embeds = kwargs["prompt_embeds"].detach().requires_grad_(True)
        au_tokens = kwargs.get("au_tokens")
        with torch.enable_grad(), frozen(pipe.unet, pipe.vae, pipe.au_adapter):
            cond = embeds
            if pipe.au_adapter is not None:  # the "text + AUs" row of the pipeline (null tokens without AUs)
                tokens = au_tokens if au_tokens is not None else pipe.au_adapter.encode(None, batch_size=len(embeds))
                cond = torch.cat([embeds, tokens.to(embeds.device, embeds.dtype)], dim=1)
            model_input = pipe.scheduler.scale_model_input(latents, t_next)
            with autocast(latents.device, getattr(pipe, "active_precision", "fp32")):
                out = denoise(pipe.unet, model_input, t_next, cond)
                x0 = predict_x0(pipe.scheduler, latents, out.to(latents.dtype), t_next)
                loss = self.loss(pipe.decode_latents(x0))
            self.losses.append(float(loss.detach()))
            return {"prompt_embeds": guided_embedding(loss, embeds, self.scale)}
