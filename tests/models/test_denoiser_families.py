"""The denoiser families behind the seam beside the SD-1.5-style UNet, end to end with tiny components: a
PixArt-style diffusion transformer (diffusers' ``PixArtTransformer2DModel``: text cross-attention in every block,
captions projected inside) and an SDXL-shaped UNet (two text encoders, pooled embedding and time ids added to the
timestep embedding), each through the pipeline, the AU adapter, semantic guidance, DDIM inversion, FERAnno's
feature hooks, save/load, train-generator, train-adapter, generate and label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_clip_encoder, tiny_sdxl_parts, tiny_vae_unet
from synfer.core.dataset import DatasetWriter, Record
from synfer.core.options import call
from synfer.generator.guidance import SemanticGuidance
from synfer.generator.layout import invert
from synfer.generator.pipeline import SynferPipeline
from synfer.generator.train_adapter import train_adapter
from synfer.generator.train_unet import train_generator
from synfer.models.au_adapter import AUAdapter
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier
from synfer.models.denoiser import FAMILIES, denoise, family_of
from synfer.models.feranno import UNetFeatureHooks
from synfer.schema import AUSet

PROMPTS = ["a happy face", "a sad face"]


def tiny_transformer():
    """An 8x8-latent, 4-channel PixArt-style transformer: 2 blocks, 2 heads of 8 (inner width 16), 32-wide captions."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(2)
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                    num_layers=2, cross_attention_dim=16, sample_size=8, patch_size=2,
                                    caption_channels=32, use_additional_conditions=False, norm_num_groups=4).eval()


def denoiser_and_encoder(family: str, folder: Path):
    if family == "pixart":
        return tiny_transformer(), tiny_clip_encoder(folder)
    return tiny_sdxl_parts(folder)


@pytest.fixture(params=["pixart", "sdxl"])
def fam_pipe(request: pytest.FixtureRequest, tmp_path: Path) -> SynferPipeline:
    from diffusers import DDIMScheduler

    vae, _ = tiny_vae_unet()
    net, encoder = denoiser_and_encoder(request.param, tmp_path / "tok")
    torch.manual_seed(3)
    adapter = AUAdapter.for_unet(net, ["AU01", "AU12"], hidden_dim=16)
    pipe = SynferPipeline(vae=vae, unet=net, text_encoder=encoder, scheduler=DDIMScheduler(), au_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe: SynferPipeline, **kw) -> torch.Tensor:
    kw = {"aus": torch.tensor([[0.1, 0.9], [0.8, 0.1]]), "num_inference_steps": 3, "output_type": "pt", **kw}
    return pipe(PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw).images


def test_the_adapter_sits_in_every_text_cross_attention_layer(fam_pipe: SynferPipeline) -> None:
    net, adapter = fam_pipe.unet, fam_pipe.au_adapter
    cross = sorted(f"{n}.processor" for n, m in net.named_modules() if n.endswith("attn2"))
    assert sorted(adapter.config.layers) == cross and len(cross) >= 2
    latents = torch.randn(2, 4, 8, 8)
    if family_of(net).name == "PixArtTransformer2DModel":
        # AU tokens join the 32-wide caption tokens before the caption projection; the attention reads 16-wide ones
        assert adapter.config.cross_attention_dim == 32 and adapter.config.attention_dim == 16
        cond = torch.randn(2, 5, 32)
    else:
        # down 1 x 2 transformer layers, up 2 x 2 (one more resnet per up block), middle 1 x 2
        assert family_of(net) is FAMILIES["SDXL"] and len(cross) == 2 + 4 + 2
        assert adapter.config.cross_attention_dim == 40  # 16 + 24: both text encoders' tokens side by side
        cond = fam_pipe.text_encoder.encode(PROMPTS)
        assert cond.shape == (2, 1 + 77, 40)  # the pooled token in front
        assert torch.equal(fam_pipe.text_encoder.encode([""]), torch.zeros(1, 78, 40))  # SDXL's zeroed "" prompt
        pooled = cond.clone()
        pooled[:, 0, :16] += 1  # the pooled embedding reaches the UNet (through its added time embedding)
        assert not torch.allclose(denoise(net, latents, 10, cond), denoise(net, latents, 10, pooled))
    assert denoise(net, latents, 10, cond).shape == latents.shape


def test_sampling_and_the_adapter_at_scale_zero_reproduce_the_base_model(fam_pipe: SynferPipeline) -> None:
    faces = draw(fam_pipe)
    assert faces.shape == (2, 1, 16, 16) and torch.isfinite(faces).all()
    assert torch.equal(faces, draw(fam_pipe))  # same seeds, same faces
    base = SynferPipeline(vae=fam_pipe.vae, unet=fam_pipe.unet, text_encoder=fam_pipe.text_encoder,
                          scheduler=fam_pipe.scheduler, au_adapter=None)
    base.set_progress_bar_config(disable=True)
    # in fp32: under bf16 the caption projection, which here runs over the text and the AU tokens together,
    # rounds differently from one over the text alone (measured: 0.019 at most, in [0, 1] pixels)
    plain = draw(base, aus=None, precision="fp32")
    fam_pipe.au_adapter.set_scale(0.0)
    # w_a = 0: the AU row is skipped, the same two rows as without adapter -> bit-identical
    assert torch.equal(draw(fam_pipe, guidance_scale_au=0.0, precision="fp32"), plain)
    # w_a = 2: the AU row is computed, but at scale 0 it equals the text row, so its guidance term vanishes
    torch.testing.assert_close(draw(fam_pipe, guidance_scale_au=2.0, precision="fp32"), plain, atol=1e-5, rtol=0)
    fam_pipe.au_adapter.set_scale(1.0)
    assert not torch.allclose(draw(fam_pipe, precision="fp32"), plain, atol=1e-3)  # at scale 1 the AUs count


def test_save_load_round_trip(fam_pipe: SynferPipeline, tmp_path: Path) -> None:
    fam_pipe.save_pretrained(tmp_path / "pipe")
    again = SynferPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert family_of(again.unet) is family_of(fam_pipe.unet)
    assert type(again.text_encoder) is type(fam_pipe.text_encoder)
    assert torch.equal(draw(fam_pipe), draw(again))


def test_semantic_guidance_inversion_and_feranno_features(fam_pipe: SynferPipeline) -> None:
    torch.manual_seed(0)
    clf = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", ["happiness", "sadness"], (1, 16, 16),
                                                model_kwargs={"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)}))
    guide = SemanticGuidance(clf, torch.tensor([0, 1]), 0.05, (0.0, 1.0))
    guided = draw(fam_pipe, callback_on_step_end=guide, callback_on_step_end_tensor_inputs=guide.tensor_inputs)
    assert torch.isfinite(guided).all() and not torch.equal(guided, draw(fam_pipe))
    faces = draw(fam_pipe) * 2 - 1
    latents = invert(fam_pipe, faces, 3, 0.6)
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
    with UNetFeatureHooks(fam_pipe.unet, tokens=4) as hooks, torch.no_grad():
        denoise(fam_pipe.unet, latents, 100, fam_pipe.encode_prompt(PROMPTS, torch.device("cpu"))[0])
    blocks = family_of(fam_pipe.unet).feature_blocks(fam_pipe.unet)
    assert len(hooks.features) == len(blocks) and all(f.ndim == 4 and len(f) == 2 for f in hooks.features)
    if family_of(fam_pipe.unet).name == "PixArtTransformer2DModel":
        assert [tuple(f.shape) for f in hooks.features] == [(2, 16, 4, 4)] * 2  # tokens back on the 4x4 patch grid
    assert hooks.attention and all(a.shape[:2] == (2, 4) for a in hooks.attention)


def test_train_generator_and_adapter(fam_pipe: SynferPipeline, tmp_path: Path) -> None:
    """Fine-tune the denoiser (train-generator from the pipeline folder), then train an AU adapter on it."""
    fam_pipe.save_pretrained(tmp_path / "pipe")
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "faces", ("happiness", "sadness"), aus=AUSet(("AU01", "AU12"))) as w:
        for split, n in (("train", 16), ("val", 4)):
            for i in range(n):
                happy = i % 2 == 0
                w.add(Record(f"{split}-{i}", split, "test", "happiness" if happy else "sadness",
                             aus=[0.1, 0.9] if happy else [0.8, 0.1], caption=PROMPTS[0 if happy else 1]),
                      Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L"))
    tuned = call(train_generator, [tmp_path / "faces"], tmp_path / "gen", pretrained=str(tmp_path / "pipe"),
                 epochs=1, batch_size=8, lr=1e-4, sample_steps=2, precision="fp32")
    before = {k: v.clone() for k, v in fam_pipe.unet.state_dict().items()}
    after = SynferPipeline.from_pretrained(tuned).unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the denoiser itself trained
    out = call(train_adapter, [tmp_path / "faces"], tmp_path / "run", pipeline=tmp_path / "pipe", hidden_dim=16,
               epochs=1, batch_size=8, lr=1e-3, sample_steps=2, precision="fp32")
    trained = SynferPipeline.from_pretrained(out.parent / "pipeline")
    trained.set_progress_bar_config(disable=True)
    assert family_of(trained.unet) is family_of(fam_pipe.unet)
    assert torch.isfinite(draw(trained)).all()


def test_generate_with_guidance_and_feranno_labelling(fam_pipe: SynferPipeline,
                                                                       tmp_path: Path) -> None:
    """The verbs on the family's generator: `generate` with semantic guidance, `train-annotator` reading the
    denoiser's blocks, `label` voting with it."""
    from conftest import PATTERN_CLASSES, write_pattern_dataset
    from synfer.core.dataset import DatasetFolder
    from synfer.labeling.label import label
    from synfer.labeling.train_annotator import train_annotator
    from synfer.synthesize.generate import generate

    fam_pipe.set_generation_defaults(num_inference_steps=2)
    fam_pipe.save_pretrained(tmp_path / "pipe")
    torch.manual_seed(0)
    guide = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", ["happiness", "sadness"], (1, 16, 16),
                                                  model_kwargs={"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)}))
    guide.save_pretrained(tmp_path / "guide")
    syn = generate(tmp_path / "syn", pipeline=str(tmp_path / "pipe"), per_class=2, expressions=["happiness", "sadness"],
                   au_source="prototype", semantic_guidance=0.05, guidance_model=str(tmp_path / "guide"),
                   preview=False)
    records = list(DatasetFolder(syn).records())
    assert len(records) == 4 and all(r.meta["guidance"]["scale"] == 0.05 for r in records)
    patterns = write_pattern_dataset(tmp_path / "patterns", per_class={"train": 12, "val": 4, "test": 2})
    head = call(train_annotator, [patterns], tmp_path / "feranno", pipeline=str(tmp_path / "pipe"), grid=4, dim=16,
                heads=2, attention_tokens=5, epochs=2, batch_size=16, lr=3e-3, read_batch_size=16)
    labelled = DatasetFolder(label(patterns, tmp_path / "labelled", [str(head)], split="test"))
    assert len(labelled) == 2 * len(PATTERN_CLASSES)
    assert all(r.expression in PATTERN_CLASSES for r in labelled.records())


def test_sdxl_checkpoint_loads_and_samples_as_diffusers_sdxl_pipeline(tmp_path: Path) -> None:
    """An SDXL checkpoint written by diffusers' own StableDiffusionXLPipeline loads through
    ``from_stable_diffusion`` with both text encoders, and synfer's sampler gives diffusers' latents (same noise,
    same scheduler, text guidance, the "" prompt zeroed as SDXL does)."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    vae, _ = tiny_vae_unet()
    unet, encoder = tiny_sdxl_parts(tmp_path / "tok")
    reference = StableDiffusionXLPipeline(vae=vae, text_encoder=encoder.text_model,
                                          text_encoder_2=encoder.text_model_2, tokenizer=encoder.tokenizer,
                                          tokenizer_2=encoder.tokenizer_2, unet=unet, scheduler=DDIMScheduler())
    reference.save_pretrained(tmp_path / "sdxl")
    pipe = SynferPipeline.from_stable_diffusion(tmp_path / "sdxl")
    assert type(pipe.text_encoder).__name__ == "SDXLTextEncoder" and family_of(pipe.unet) is FAMILIES["SDXL"]
    for p in (pipe, reference):
        p.set_progress_bar_config(disable=True)
    # the conditioning: diffusers' prompt embeddings are synfer's tokens 1..77, its pooled ones token 0
    embeds, _, pooled, _ = reference.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    ours = pipe.text_encoder.encode(PROMPTS)
    torch.testing.assert_close(ours[:, 1:], embeds)
    torch.testing.assert_close(ours[:, 0, :16], pooled)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    size = (8 * 8, 8 * 8)  # SDXL's time ids in pixels of its 8x VAE (this tiny VAE is 2x)
    want = reference(PROMPTS, num_inference_steps=3, guidance_scale=4.0, latents=noise, original_size=size,
                     target_size=size, output_type="latent").images
    got = pipe(PROMPTS, num_inference_steps=3, guidance_scale=4.0, latents=noise, output_type="latent",
               precision="fp32").images
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_train_generator_with_lora_from_an_sdxl_checkpoint(tmp_path: Path) -> None:
    """`train-generator --pretrained <SDXL checkpoint> --lora-rank 2`: both text encoders frozen and cached, the
    pooled token and time ids reaching the UNet in training, the LoRA fused into the exported SDXL pipeline."""
    pytest.importorskip("peft")
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    vae, _ = tiny_vae_unet()
    unet, encoder = tiny_sdxl_parts(tmp_path / "tok")
    StableDiffusionXLPipeline(vae=vae, text_encoder=encoder.text_model, text_encoder_2=encoder.text_model_2,
                              tokenizer=encoder.tokenizer, tokenizer_2=encoder.tokenizer_2, unet=unet,
                              scheduler=DDIMScheduler()).save_pretrained(tmp_path / "sdxl")
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "faces", ("happiness", "sadness")) as w:
        for split, n in (("train", 8), ("val", 2)):
            for i in range(n):
                w.add(Record(f"{split}-{i}", split, "test", ("happiness", "sadness")[i % 2], caption=PROMPTS[i % 2]),
                      Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L"))
    tuned = call(train_generator, [tmp_path / "faces"], tmp_path / "gen", pretrained=str(tmp_path / "sdxl"),
                 lora_rank=2, epochs=1, batch_size=4, lr=1e-3, sample_steps=2, precision="fp32")
    pipe = SynferPipeline.from_pretrained(tuned)
    assert type(pipe.text_encoder).__name__ == "SDXLTextEncoder" and family_of(pipe.unet) is FAMILIES["SDXL"]
    before = unet.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())  # LoRA fused in
    pipe.set_progress_bar_config(disable=True)
    assert torch.isfinite(draw(pipe, aus=None)).all()


def test_sdxl_parts_are_checked_against_each_other(tmp_path: Path) -> None:
    """An SDXL UNet refuses a one-encoder CLIP text encoder and the reverse (the pooled token would be read as text),
    a refiner checkpoint is refused by name, a saved SDXL encoder loads as one, and a cut-off prompt warns once."""
    import warnings

    from diffusers import DDIMScheduler, UNet2DConditionModel

    from synfer.generator.train_unet import load_text_encoder

    vae, unet = tiny_vae_unet()
    sdxl_unet, encoder = tiny_sdxl_parts(tmp_path / "tok")
    with pytest.raises(ValueError, match="pooled text embedding of width 16"):
        SynferPipeline(vae=vae, unet=sdxl_unet, text_encoder=tiny_clip_encoder(tmp_path / "t2", hidden=40),
                       scheduler=DDIMScheduler())
    small = UNet2DConditionModel(**{**dict(unet.config), "cross_attention_dim": 40})
    with pytest.raises(ValueError, match="SDXLTextEncoder an SDXL UNet"):
        SynferPipeline(vae=vae, unet=small, text_encoder=encoder, scheduler=DDIMScheduler())
    (tmp_path / "refiner").mkdir()
    (tmp_path / "refiner" / "model_index.json").write_text('{"requires_aesthetics_score": true}')
    with pytest.raises(ValueError, match="refiner"):
        SynferPipeline.from_stable_diffusion(tmp_path / "refiner")
    encoder.save_pretrained(tmp_path / "enc")
    again = load_text_encoder(str(tmp_path / "enc"), 40)
    assert type(again).__name__ == "SDXLTextEncoder" and torch.equal(again.encode(PROMPTS), encoder.encode(PROMPTS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder.encode(["a very long caption " * 6])
    assert sum("truncated" in str(w.message) for w in caught) == 1
