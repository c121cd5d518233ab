"""AU adapter: exactness at scale 0 and after remove, AU effect, save/load, gradients, scales, AU order checks.

Tiny random UNets built here (no network): a two-block one and an SD-shaped one (three cross-attention down/up
blocks, mid-block cross-attention, SD2-style linear projections and per-block heads).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from synfer.models.au_adapter import AUAdapter, AUAttnProcessor
from synfer.schema import OrderMismatchError

AUS = ["AU01", "AU04", "AU06", "AU12", "AU15"]
L = 5  # text tokens


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def sd_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=24, attention_head_dim=(2, 2, 4, 4), use_linear_projection=True, norm_num_groups=8,
    ).eval()


BUILDERS = {"tiny": tiny_unet, "sd": sd_unet}


def inputs(unet: UNet2DConditionModel, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    d = unet.config.cross_attention_dim
    return (torch.randn(batch, 4, 8, 8, generator=g), torch.tensor([10, 500] * (batch // 2)),
            torch.randn(batch, L, d, generator=g), torch.rand(batch, len(AUS), generator=g))


def run(unet: UNet2DConditionModel, x, t, ehs, **kw) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, t, ehs, **kw).sample


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_scale_zero_is_base_exactly_and_remove_restores(kind: str) -> None:
    unet = BUILDERS[kind]()
    x, t, text, aus = inputs(unet)
    base = run(unet, x, t, text)
    before = unet.attn_processors
    keys_before = list(unet.state_dict())
    adapter = AUAdapter.for_unet(unet, AUS)
    expected_layers = 4 if kind == "tiny" else 10  # up blocks hold layers_per_block + 1 attentions
    assert len(adapter.config.layers) == expected_layers

    adapter.install(unet)
    assert adapter.installed_on(unet)
    procs = unet.attn_processors
    assert {n for n, p in procs.items() if isinstance(p, AUAttnProcessor)} == set(adapter.config.layers)
    assert all(procs[n] is p for n, p in before.items() if n not in adapter.config.layers)  # attn1 untouched
    assert list(unet.state_dict()) == keys_before  # the UNet never owns adapter weights
    adapter.set_scale(0.0)
    assert torch.equal(run(unet, x, t, adapter.condition(text, aus)), base)  # test 1: bit-identical

    adapter.remove(unet)  # test 2
    assert not adapter.installed_on(unet)
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert torch.equal(run(unet, x, t, text), base)


def test_scale_zero_is_exact_with_text_attention_mask() -> None:
    unet = tiny_unet()
    x, t, text, aus = inputs(unet)
    mask = torch.ones(2, L)
    mask[0, -2:] = 0
    base = run(unet, x, t, text, encoder_attention_mask=mask)
    adapter = AUAdapter.for_unet(unet, AUS)
    with adapter.applied_to(unet):
        adapter.set_scale(0.0)
        cond = adapter.condition(text, aus)
        assert torch.equal(run(unet, x, t, cond, encoder_attention_mask=mask), base)  # mask over L keys
        full = torch.cat([mask, torch.ones(2, adapter.config.num_tokens)], dim=1)
        assert torch.equal(run(unet, x, t, cond, encoder_attention_mask=full), base)  # mask over L + N keys
        adapter.set_scale(1.0)
        masked_au = full.clone()
        masked_au[:, L:] = 0
        masked_au[:, L] = 1  # leave one AU token visible: the AU mask columns are honoured
        assert not torch.equal(run(unet, x, t, cond, encoder_attention_mask=masked_au),
                               run(unet, x, t, cond, encoder_attention_mask=full))
    assert not adapter.installed_on(unet)


def test_processor_matches_attnprocessor2_0_on_every_attention_option() -> None:
    """group_norm, spatial_norm, norm_cross, 4-D input, residual, rescale, mask: scale 0 equals AttnProcessor2_0."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=12, heads=2, dim_head=16, norm_num_groups=4,
                     spatial_norm_dim=3, cross_attention_norm="layer_norm", residual_connection=True,
                     rescale_output_factor=2.0, bias=True).eval()
    name = "attn.processor"
    adapter = AUAdapter(au_names=AUS, cross_attention_dim=12, layers={name: {"hidden_size": 32}}, num_tokens=3)
    proc = AUAttnProcessor(adapter, name, previous=None)
    hs, temb, text = torch.randn(2, 32, 4, 4), torch.randn(2, 3, 2, 2), torch.randn(2, 6, 12)
    mask = torch.zeros(2, 1, 6)
    mask[1, :, -1] = -10000.0
    ehs = adapter.condition(text, torch.rand(2, len(AUS)))
    with torch.no_grad():
        ref = AttnProcessor2_0()(attn, hs, text, mask, temb)
        adapter.set_scale(0.0)
        assert torch.equal(proc(attn, hs, ehs, mask, temb), ref)
        adapter.set_scale(0.5)
        assert not torch.allclose(proc(attn, hs, ehs, mask, temb), ref)
    with pytest.raises(ValueError, match="adapter.condition"):
        proc(attn, hs, text[:, :3], None, temb)


def test_aus_change_the_output() -> None:
    unet = tiny_unet()
    x, t, text, aus = inputs(unet)
    base = run(unet, x, t, text)
    adapter = AUAdapter.for_unet(unet, AUS)
    with adapter.applied_to(unet):
        out1 = run(unet, x, t, adapter.condition(text, aus))
        out2 = run(unet, x, t, adapter.condition(text, 1 - aus))
    assert not torch.allclose(out1, base, atol=1e-5)
    assert not torch.allclose(out1, out2, atol=1e-5)
    assert (out1[0] - out2[0]).abs().max() > 0 and (out1[1] - out2[1]).abs().max() > 0


def test_save_load_round_trip(tmp_path) -> None:
    unet = tiny_unet()
    x, t, text, aus = inputs(unet)
    adapter = AUAdapter.for_unet(unet, AUS, num_tokens=2, hidden_dim=16)
    with torch.no_grad():  # move off the init so the round trip is not trivially equal
        for p in adapter.parameters():
            p.add_(0.01 * torch.randn_like(p))
    with adapter.applied_to(unet):
        ref = run(unet, x, t, adapter.condition(text, aus))
    adapter.save_pretrained(str(tmp_path / "ad"))
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["config.json",
                                                                   "diffusion_pytorch_model.safetensors"]
    loaded = AUAdapter.from_pretrained(str(tmp_path / "ad"))
    assert loaded.config.layers == adapter.config.layers and loaded.au_names == tuple(AUS)
    assert loaded.config.num_tokens == 2 and loaded.config.hidden_dim == 16
    with loaded.applied_to(unet):
        assert torch.equal(run(unet, x, t, loaded.condition(text, aus)), ref)
    with pytest.raises(ValueError, match="safetensors only"):
        adapter.save_pretrained(str(tmp_path / "bad"), safe_serialization=False)
    (tmp_path / "ad" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "ad" / "diffusion_pytorch_model.bin")
    with pytest.raises(OSError, match="diffusion_pytorch_model.safetensors"):  # a pickle is never a fallback
        AUAdapter.from_pretrained(str(tmp_path / "ad"))


def test_standardized_inputs_keep_the_function_and_round_trip(tmp_path) -> None:
    unet = tiny_unet()
    _, _, _, aus = inputs(unet)
    adapter = AUAdapter.for_unet(unet, AUS, num_tokens=2, hidden_dim=16)
    with torch.no_grad():
        adapter.proj[0].bias.normal_()
    mean, std = [0.2, 0.1, 0.05, 0.3, 0.02], [0.3, 0.2, 0.1, 0.25, 0.04]
    std_in = adapter.with_standardized_inputs(mean, std)
    assert std_in.config.au_mean == mean and std_in.config.au_std == std and adapter.config.get("au_mean") is None
    with torch.no_grad():
        assert torch.allclose(std_in.encode(aus), adapter.encode(aus), atol=1e-5)
    again = std_in.with_standardized_inputs([0.0] * 5, [1.0] * 5)  # refolding again keeps it too
    with torch.no_grad():
        assert torch.allclose(again.encode(aus), adapter.encode(aus), atol=1e-5)
    std_in.save_pretrained(str(tmp_path / "std"))
    loaded = AUAdapter.from_pretrained(str(tmp_path / "std"))
    with torch.no_grad():
        assert loaded.config.au_std == std and torch.equal(loaded.encode(aus), std_in.encode(aus))
    with pytest.raises(ValueError, match="together"):
        AUAdapter(AUS, 32, adapter.config.layers, au_mean=mean)
    with pytest.raises(ValueError, match="one value per AU"):
        AUAdapter(AUS, 32, adapter.config.layers, au_mean=mean[:2], au_std=std[:2])
    with pytest.raises(ValueError, match="> 0"):
        AUAdapter(AUS, 32, adapter.config.layers, au_mean=mean, au_std=[0.0] * 5)


def test_gradients_reach_adapter_only() -> None:
    unet = tiny_unet()
    unet.requires_grad_(False)
    x, t, text, aus = inputs(unet)
    adapter = AUAdapter.for_unet(unet, AUS).train()
    adapter.install(unet)
    unet.requires_grad_(False)  # after install too: must not freeze the adapter
    assert all(p.requires_grad for p in adapter.trainable_parameters())
    unet_ids = {id(p) for p in unet.parameters()}
    assert not unet_ids & {id(p) for p in adapter.trainable_parameters()}
    cond = adapter.condition(text, aus, drop_mask=torch.tensor([True, False]))
    unet(x, t, cond).sample.pow(2).mean().backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in unet.parameters())
    names = {n.split(".")[0] for n, _ in adapter.named_parameters()}
    assert names == {"proj", "norm", "null_tokens", "to_k_au", "to_v_au"}


def test_per_block_scale() -> None:
    unet = tiny_unet()
    x, t, text, aus = inputs(unet)
    adapter = AUAdapter.for_unet(unet, AUS)
    cond = adapter.condition(text, aus).detach()
    outs = {}
    with adapter.applied_to(unet):
        for label, scale in {"one": 1.0, "zero": 0.0, "mixed": {"down": 0.0, "up": 1.0}}.items():
            adapter.set_scale(scale)
            outs[label] = run(unet, x, t, cond)
    assert not torch.equal(outs["mixed"], outs["one"]) and not torch.equal(outs["mixed"], outs["zero"])

    adapter.set_scale({"up": 0.0, "up_blocks.1.attentions.1": 2.0, "mid": 0.5})
    scales = {n.split(".transformer")[0]: adapter.layer_scale(n) for n in adapter.config.layers}
    assert scales == {"down_blocks.0.attentions.0": 1.0, "mid_block.attentions.0": 0.5,
                      "up_blocks.1.attentions.0": 0.0, "up_blocks.1.attentions.1": 2.0}  # most specific wins
    with pytest.raises(ValueError, match=r"Unknown scale prefix.*'upp'.*'down'"):
        adapter.set_scale({"upp": 1.0})
    with pytest.raises(ValueError, match="Unknown scale prefix"):
        adapter.set_scale({"up_blocks.7": 1.0})
    with pytest.raises(ValueError, match="finite"):
        adapter.set_scale(float("nan"))


def test_au_order_and_width_checks() -> None:
    adapter = AUAdapter.for_unet(tiny_unet(), AUS)
    adapter.check_aus(AUS, "dataset.json")
    with pytest.raises(OrderMismatchError, match=r"AU adapter.*data/x/dataset.json"):
        adapter.check_aus(["AU04", "AU01", "AU06", "AU12", "AU15"], "data/x/dataset.json")
    with pytest.raises(ValueError, match=r"\(batch, 5\).*7 values per row, expected 5"):
        adapter.encode(torch.rand(2, 7))
    with pytest.raises(ValueError, match="AU names must be canonical"):
        AUAdapter(au_names=["au1"], cross_attention_dim=8, layers={"a.processor": {"hidden_size": 8}})


def test_kv_init_copies_unet_weights() -> None:
    unet = tiny_unet()
    adapter = AUAdapter.for_unet(unet, AUS)
    for name in adapter.config.layers:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        key = name.removesuffix(".processor").replace(".", "__")
        assert torch.equal(adapter.to_k_au[key].weight, attn.to_k.weight)
        assert torch.equal(adapter.to_v_au[key].weight, attn.to_v.weight)
        assert adapter.to_k_au[key].weight.data_ptr() != attn.to_k.weight.data_ptr()  # a copy, not shared


def test_null_tokens_where_dropped() -> None:
    adapter = AUAdapter.for_unet(tiny_unet(), AUS)
    with torch.no_grad():
        adapter.null_tokens.normal_()
    aus = torch.rand(3, len(AUS))
    full = adapter.encode(aus)
    mixed = adapter.encode(aus, drop_mask=torch.tensor([False, True, False]))
    assert torch.equal(mixed[1], adapter.null_tokens)
    assert torch.equal(mixed[0], full[0]) and torch.equal(mixed[2], full[2])
    assert not torch.equal(full[1], adapter.null_tokens)
    assert torch.equal(adapter.encode(None, batch_size=3), adapter.null_tokens.expand(3, -1, -1))
    assert adapter.condition(torch.randn(3, L, 32), None).shape == (3, L + 4, 32)


def test_install_guards() -> None:
    unet = tiny_unet()
    adapter = AUAdapter.for_unet(unet, AUS)
    with pytest.raises(ValueError, match="not installed"):
        adapter.remove(unet)
    adapter.install(unet)
    with pytest.raises(ValueError, match="this adapter is already installed"):
        adapter.install(unet)
    with pytest.raises(ValueError, match="another AU adapter"):
        AUAdapter.for_unet(tiny_unet(), AUS).install(unet)
    adapter.remove(unet)
    with pytest.raises(ValueError, match="built for another UNet"):
        adapter.install(sd_unet())
