"""Annotators for ``synfer label``: FERAnno on a generator's UNet, and any expression classifier, behind one call.

An annotator maps a list of PIL faces to class probabilities (B, K) in its ``label_names`` order (each converts the
faces to what it reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..models.denoiser import denoise
from ..models.feranno import FERAnnoHead, UNetFeatureHooks, is_feranno, read_weights_sha256


class FERAnnotator:
    """The generator's VAE and frozen UNet read a face once at a small timestep; a :class:`FERAnnoHead` (or none,
    for feature extraction) turns what the hooks captured into expression logits.

    Args:
        pipe: the SynferPipeline whose UNet is read (its AU adapter, if any, is not applied: the pass is
            class-agnostic, text only).
        head: the trained head, or None to only :meth:`read` features.
        prompt: the class-agnostic prompt.
        timestep: noise level of the single pass (1 = almost clean, as the paper).
        attention_tokens: prompt tokens whose cross-attention maps are read.
        seed: the fixed noise draw (the same face always gives the same features).
    """

    def __init__(self, pipe: Any, head: FERAnnoHead | None = None, prompt: str = "a photo of a face",
                 timestep: int = 1, attention_tokens: int = 8, seed: int = 0) -> None:
        self.pipe, self.head = pipe, head
        if head is not None:
            prompt, timestep, attention_tokens = head.config.prompt, head.config.timestep, head.config.attention_tokens
        self.prompt, self.timestep, self.tokens, self.seed = prompt, int(timestep), int(attention_tokens), seed
        self._embeds: torch.Tensor | None = None
        n_train = pipe.scheduler.config.num_train_timesteps
        if not 0 <= self.timestep < n_train:
            raise ValueError(f"timestep must be in [0, {n_train}); got {timestep}.")

    @property
    def label_names(self) -> list[str]:
        if self.head is None:
            raise ValueError("this FERAnnotator has no head; it only reads features.")
        return self.head.config.label_names

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Faces (B, C, H, W) in [0, 1] at the VAE's size -> (feature maps per up block, attention maps per
        cross-attention layer), see :class:`UNetFeatureHooks`."""
        from ..generator.layout import encode_images

        pipe = self.pipe
        z0 = encode_images(pipe, images)
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(self.seed)).to(z0.device, z0.dtype)
        a = pipe.scheduler.alphas_cumprod[self.timestep].to(z0.device, z0.dtype)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        if self._embeds is None or self._embeds.device != z0.device:  # one prompt for every face: encode it once
            self._embeds = pipe.encode_prompt([self.prompt], z0.device)[0]
        embeds = self._embeds.expand(len(z0), -1, -1)
        t = torch.tensor(self.timestep, device=z0.device)
        with UNetFeatureHooks(pipe.unet, self.tokens) as hooks:
            denoise(pipe.unet, zt, t, embeds)
        return hooks.features, hooks.attention

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL faces -> probabilities (B, K) (resized to the VAE's size and channels)."""
        from ..generator.layout import to_pipeline_images

        features, attention = self.read(to_pipeline_images(self.pipe, images))
        return self.head.to(features[0].device)(features, attention).float().softmax(-1).cpu()


class ClassifierAnnotator:
    """An :class:`~synfer.models.classifiers.ExpressionClassifier` as an annotator (optionally mirror TTA)."""

    def __init__(self, classifier: Any, tta: bool = False) -> None:
        self.classifier, self.tta = classifier.eval(), tta

    @property
    def label_names(self) -> list[str]:
        return self.classifier.label_names

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL faces -> probabilities (B, K) (converted to the classifier's channels and input size)."""
        c, h, w = self.classifier.config.input_size
        mode = "L" if c == 1 else "RGB"
        arrays = [np.asarray(im.convert(mode).resize((w, h), Image.BICUBIC), dtype=np.float32) / 255
                  for im in images]
        x = torch.from_numpy(np.stack(arrays))
        x = (x[:, None] if c == 1 else x.permute(0, 3, 1, 2)).to(self.classifier.mean.device)
        p = self.classifier(x).float().softmax(-1)
        if self.tta:
            p = 0.5 * (p + self.classifier(x.flip(-1)).float().softmax(-1))
        return p.cpu()


def load_annotator(spec: str | Path, device: str | torch.device = "cpu", pipeline: Any = None) -> Any:
    """A FERAnno folder (``synfer train-annotator``; its generator is loaded unless ``pipeline`` is given), or a
    classifier folder / bundled name."""
    from ..models.classifiers import ExpressionClassifier

    if is_feranno(spec):
        from ..generator.pipeline import load_generator

        head = FERAnnoHead.from_pretrained(spec)
        if pipeline is None:
            pipeline, folder = load_generator(head.config.generator, device)
            want = head.config.generator_sha256
            sha = read_weights_sha256(folder)
            if want and want != sha:
                raise ValueError(f"{spec} was trained on the UNet of generator {head.config.generator!r} with weights "
                                 f"{want[:12]}..., but the VAE, UNet and text encoder of that generator are now "
                                 f"{sha[:12]}...; retrain it (`synfer train-annotator`) for this generator.")
        return FERAnnotator(pipeline, head.to(pipeline.device))
    return ClassifierAnnotator(ExpressionClassifier.from_pretrained(spec).to(device))
