"""Mixed precision on the CPU: bf16 sampling, guidance and inversion stay close to fp32, and the pieces that must
stay fp32 (the guidance gradient, the scheduler's latents) do."""

from __future__ import annotations

import numpy as np
import torch

from conftest import make_pipe
from synfer.generator.guidance import SemanticGuidance
from synfer.generator.layout import invert
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier


def draw(pipe, precision: str, **kw) -> torch.Tensor:
    return pipe(["a happy face", "a sad face"], aus=torch.tensor([[0.1, 0.9], [0.8, 0.1]]), num_inference_steps=4,
                generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="pt",
                precision=precision, **kw).images


def test_bf16_sampling_is_close_to_fp32_and_returns_fp32() -> None:
    from synfer.generator.pipeline import load_generator

    pipe, _ = load_generator("bundled")  # trained weights: a random tiny UNet amplifies rounding
    aus = torch.zeros(2, len(pipe.au_adapter.au_names))
    full, half = (pipe(["a happy face", "a sad face"], aus=aus, generator=[torch.Generator().manual_seed(i)
                       for i in range(2)], output_type="pt", precision=p).images for p in ("fp32", "bf16"))
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert not torch.equal(full, half)  # bf16 really ran
    assert (full - half).abs().mean() < 0.03  # bf16 keeps 8 bits of mantissa: pixels move, faces do not


def test_semantic_guidance_in_bf16_keeps_its_gradient_in_fp32(parts: dict, monkeypatch) -> None:
    pipe = make_pipe(parts)
    torch.manual_seed(0)
    clf = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", ["happiness", "sadness"], (1, 16, 16),
                                                model_kwargs={"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)}))
    seen: list[torch.dtype] = []
    original = SemanticGuidance.__call__

    def recording(self, pipe_, step, timestep, tensors):
        out = original(self, pipe_, step, timestep, tensors)
        if "prompt_embeds" in out:
            seen.append(out["prompt_embeds"].dtype)
        return out

    guide = SemanticGuidance(clf, torch.tensor([0, 1]), 0.05, (0.0, 1.0))
    monkeypatch.setattr(SemanticGuidance, "__call__", recording)
    guided = draw(pipe, "bf16", callback_on_step_end=guide, callback_on_step_end_tensor_inputs=guide.tensor_inputs)
    monkeypatch.undo()
    plain = draw(pipe, "bf16")
    assert seen and all(d == torch.float32 for d in seen)  # the guided embeddings come back in fp32
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)


def test_ddim_inversion_in_bf16_lands_near_fp32(parts: dict) -> None:
    pipe = make_pipe(parts)
    faces = draw(pipe, "fp32") * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = invert(pipe, faces, 4, 0.6)
    full = invert(pipe, faces, 4, 0.6)
    assert low.dtype == torch.float32
    rel = float((low - full).norm() / full.norm())
    assert np.isfinite(rel) and rel < 0.05
