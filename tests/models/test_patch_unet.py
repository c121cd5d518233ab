"""PatchUNet2DConditionModel: a diffusers UNet on p x p patches of the latents, behaving as the plain UNet it wraps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from conftest import tiny_clip_encoder
from synfer.diffusion.pipeline import SynferPipeline
from synfer.diffusion.train_unet import build_unet
from synfer.models.au_adapter import AUAdapter
from synfer.models.patch_unet import PatchUNet2DConditionModel


def tiny(patch_size: int = 2) -> PatchUNet2DConditionModel:
    torch.manual_seed(0)
    return build_unet(16, 4, (16, 32), 1, 2, 32, None, patch_size=patch_size).eval()


def test_it_is_the_inner_unet_on_folded_latents() -> None:
    unet = tiny()
    assert isinstance(unet, PatchUNet2DConditionModel) and unet.conv_in.in_channels == 16
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.sample_size) == (4, 4, 16)
    inner_config = {k: v for k, v in unet.config.items() if not k.startswith("_") and k != "patch_size"}
    inner = UNet2DConditionModel(**{**inner_config, "in_channels": 16, "out_channels": 16, "sample_size": 8})
    inner.load_state_dict(unet.state_dict())
    x, cond = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    with torch.no_grad():
        out = unet(x, 10, encoder_hidden_states=cond).sample
        (tuple_out,) = unet(x, 10, encoder_hidden_states=cond, return_dict=False)
        expected = F.pixel_shuffle(inner(F.pixel_unshuffle(x, 2), 10, encoder_hidden_states=cond).sample, 2)
    assert out.shape == x.shape and torch.equal(out, tuple_out)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # each output patch comes from the whole input (not a per-pixel map): a change in one corner moves the others
    y = x.clone()
    y[:, :, 0, 0] += 1.0
    with torch.no_grad():
        assert not torch.allclose(unet(y, 10, encoder_hidden_states=cond).sample[..., -1, -1], out[..., -1, -1])


def test_save_load_round_trip_keeps_class_config_and_outputs(tmp_path: Path) -> None:
    unet = tiny()
    unet.save_pretrained(tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert config["_class_name"] == "PatchUNet2DConditionModel" and config["patch_size"] == 2
    assert (config["in_channels"], config["sample_size"]) == (4, 16)  # the latents the pipeline passes in
    assert list((tmp_path / "unet").glob("*.safetensors"))
    loaded = PatchUNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    before, after = unet.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    x, cond = torch.randn(1, 4, 16, 16), torch.randn(1, 3, 32)
    with torch.no_grad():  # same weights bit for bit; CPU conv kernels may sum in another order (~1e-6)
        torch.testing.assert_close(loaded(x, 5, cond).sample, unet(x, 5, cond).sample, atol=1e-5, rtol=0)


def test_in_a_pipeline_with_the_au_adapter(tmp_path: Path) -> None:
    unet = tiny()
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=32).eval()
    adapter = AUAdapter.for_unet(unet, ["AU01", "AU12"], hidden_dim=16)
    pipe = SynferPipeline(vae=vae, unet=unet, text_encoder=tiny_clip_encoder(tmp_path / "tok"),
                          scheduler=DDIMScheduler(), au_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    aus = torch.tensor([[0.0, 1.0], [1.0, 0.0]])

    def run(p: SynferPipeline, **kw) -> torch.Tensor:
        return p(["a smile", "a frown"], num_inference_steps=3, output_type="pt",
                 generator=torch.Generator().manual_seed(0), **kw).images

    before = run(pipe, aus=aus)
    assert before.shape == (2, 1, 32, 32)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["unet"] == ["synfer.models.patch_unet", "PatchUNet2DConditionModel"]
    loaded = SynferPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.unet, PatchUNet2DConditionModel)
    torch.testing.assert_close(run(loaded, aus=aus), before, atol=1e-5, rtol=0)
    # the adapter at scale 0 gives the base UNet's output exactly
    adapter.set_scale(0.0)
    plain = SynferPipeline(vae=vae, unet=unet, text_encoder=pipe.text_encoder, scheduler=DDIMScheduler())
    plain.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(pipe, aus=aus, guidance_scale_au=2.0), run(plain), atol=1e-5, rtol=0)


def test_sizes_that_do_not_fold_are_refused() -> None:
    with pytest.raises(ValueError, match="must divide"):
        build_unet(15, 4, (16, 32), 1, 2, 32, None, patch_size=2)
    with pytest.raises(ValueError, match="halve"):
        build_unet(12, 4, (16, 32, 32), 1, 2, 32, None, patch_size=2)  # 6 -> 3 -> 1.5
    with pytest.raises(ValueError, match="patch_size"):
        PatchUNet2DConditionModel(patch_size=0, sample_size=8, block_out_channels=(16, 32), norm_num_groups=8)
