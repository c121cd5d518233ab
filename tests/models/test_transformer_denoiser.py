"""A second denoiser family behind the seam: a PixArt-style diffusion transformer (diffusers'
``PixArtTransformer2DModel``, text cross-attention in every block, captions projected inside) through the pipeline,
the AU adapter, semantic guidance, DDIM inversion, FERAnno's feature hooks, save/load and train-adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_clip_encoder, tiny_vae_unet
from synfer.core.dataset import DatasetWriter, Record
from synfer.core.options import call
from synfer.generator.guidance import SemanticGuidance
from synfer.generator.layout import invert
from synfer.generator.pipeline import SynferPipeline
from synfer.generator.train_adapter import train_adapter
from synfer.generator.train_unet import train_generator
from synfer.models.au_adapter import AUAdapter
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier
from synfer.models.denoiser import denoise, family_of
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


@pytest.fixture()
def dit_pipe(tmp_path: Path) -> SynferPipeline:
    from diffusers import DDIMScheduler

    vae, _ = tiny_vae_unet()
    net = tiny_transformer()
    torch.manual_seed(3)
    adapter = AUAdapter.for_unet(net, ["AU01", "AU12"], hidden_dim=16)
    pipe = SynferPipeline(vae=vae, unet=net, text_encoder=tiny_clip_encoder(tmp_path / "tok"),
                          scheduler=DDIMScheduler(), au_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe: SynferPipeline, **kw) -> torch.Tensor:
    kw = {"aus": torch.tensor([[0.1, 0.9], [0.8, 0.1]]), "num_inference_steps": 3, "output_type": "pt", **kw}
    return pipe(PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw).images


def test_the_adapter_sits_in_every_blocks_text_cross_attention(dit_pipe: SynferPipeline) -> None:
    net, adapter = dit_pipe.unet, dit_pipe.au_adapter
    assert family_of(net).name == "PixArtTransformer2DModel"
    assert sorted(adapter.config.layers) == [f"transformer_blocks.{i}.attn2.processor" for i in range(2)]
    # AU tokens join the 32-wide caption tokens before the caption projection; the attention reads 16-wide ones
    assert adapter.config.cross_attention_dim == 32 and adapter.config.attention_dim == 16
    latents = torch.randn(2, 4, 8, 8)
    assert denoise(net, latents, 10, torch.randn(2, 5, 32)).shape == latents.shape


def test_sampling_and_the_adapter_at_scale_zero_reproduce_the_base_model(dit_pipe: SynferPipeline) -> None:
    faces = draw(dit_pipe)
    assert faces.shape == (2, 1, 16, 16) and torch.isfinite(faces).all()
    assert torch.equal(faces, draw(dit_pipe))  # same seeds, same faces
    base = SynferPipeline(vae=dit_pipe.vae, unet=dit_pipe.unet, text_encoder=dit_pipe.text_encoder,
                          scheduler=dit_pipe.scheduler, au_adapter=None)
    base.set_progress_bar_config(disable=True)
    # in fp32: under bf16 the caption projection, which here runs over the text and the AU tokens together,
    # rounds differently from one over the text alone (measured: 0.019 at most, in [0, 1] pixels)
    plain = draw(base, aus=None, precision="fp32")
    dit_pipe.au_adapter.set_scale(0.0)
    # w_a = 0: the AU row is skipped, the same two rows as without adapter -> bit-identical
    assert torch.equal(draw(dit_pipe, guidance_scale_au=0.0, precision="fp32"), plain)
    # w_a = 2: the AU row is computed, but at scale 0 it equals the text row, so its guidance term vanishes
    torch.testing.assert_close(draw(dit_pipe, guidance_scale_au=2.0, precision="fp32"), plain, atol=1e-5, rtol=0)
    dit_pipe.au_adapter.set_scale(1.0)
    assert not torch.allclose(draw(dit_pipe, precision="fp32"), plain, atol=1e-3)  # at scale 1 the AUs count


def test_save_load_round_trip(dit_pipe: SynferPipeline, tmp_path: Path) -> None:
    dit_pipe.save_pretrained(tmp_path / "dit")
    again = SynferPipeline.from_pretrained(tmp_path / "dit")
    again.set_progress_bar_config(disable=True)
    assert type(again.unet).__name__ == "PixArtTransformer2DModel"
    assert torch.equal(draw(dit_pipe), draw(again))


def test_semantic_guidance_inversion_and_feranno_features(dit_pipe: SynferPipeline) -> None:
    torch.manual_seed(0)
    clf = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", ["happiness", "sadness"], (1, 16, 16),
                                                model_kwargs={"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)}))
    guide = SemanticGuidance(clf, torch.tensor([0, 1]), 0.05, (0.0, 1.0))
    guided = draw(dit_pipe, callback_on_step_end=guide, callback_on_step_end_tensor_inputs=guide.tensor_inputs)
    assert torch.isfinite(guided).all() and not torch.equal(guided, draw(dit_pipe))
    faces = draw(dit_pipe) * 2 - 1
    latents = invert(dit_pipe, faces, 3, 0.6)
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
    with UNetFeatureHooks(dit_pipe.unet, tokens=4) as hooks, torch.no_grad():
        denoise(dit_pipe.unet, latents, 100, dit_pipe.encode_prompt(PROMPTS, torch.device("cpu"))[0])
    assert [tuple(f.shape) for f in hooks.features] == [(2, 16, 4, 4)] * 2  # tokens back on the 4x4 patch grid
    assert len(hooks.attention) == 2 and hooks.attention[0].shape[:2] == (2, 4)


def test_train_generator_and_adapter_on_a_transformer_pipeline(dit_pipe: SynferPipeline, tmp_path: Path) -> None:
    """Fine-tune the transformer (train-generator from the pipeline folder), then train an AU adapter on it."""
    dit_pipe.save_pretrained(tmp_path / "dit")
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "faces", ("happiness", "sadness"), aus=AUSet(("AU01", "AU12"))) as w:
        for split, n in (("train", 16), ("val", 4)):
            for i in range(n):
                happy = i % 2 == 0
                w.add(Record(f"{split}-{i}", split, "test", "happiness" if happy else "sadness",
                             aus=[0.1, 0.9] if happy else [0.8, 0.1], caption=PROMPTS[0 if happy else 1]),
                      Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L"))
    tuned = call(train_generator, [tmp_path / "faces"], tmp_path / "gen", pretrained=str(tmp_path / "dit"),
                 epochs=1, batch_size=8, lr=1e-4, sample_steps=2, precision="fp32")
    before = {k: v.clone() for k, v in dit_pipe.unet.state_dict().items()}
    after = SynferPipeline.from_pretrained(tuned).unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the transformer itself trained
    out = call(train_adapter, [tmp_path / "faces"], tmp_path / "run", pipeline=tmp_path / "dit", hidden_dim=16,
               epochs=1, batch_size=8, lr=1e-3, sample_steps=2, precision="fp32")
    trained = SynferPipeline.from_pretrained(out.parent / "pipeline")
    trained.set_progress_bar_config(disable=True)
    assert type(trained.unet).__name__ == "PixArtTransformer2DModel"
    assert torch.isfinite(draw(trained)).all()


def test_generate_with_guidance_and_feranno_labelling_on_a_transformer(dit_pipe: SynferPipeline,
                                                                       tmp_path: Path) -> None:
    """The verbs on a transformer generator: `generate` with semantic guidance, `train-annotator` reading the
    transformer's blocks, `label` voting with it."""
    from conftest import PATTERN_CLASSES, write_pattern_dataset
    from synfer.core.dataset import DatasetFolder
    from synfer.labeling.label import label
    from synfer.labeling.train_annotator import train_annotator
    from synfer.synthesize.generate import generate

    dit_pipe.set_generation_defaults(num_inference_steps=2)
    dit_pipe.save_pretrained(tmp_path / "dit")
    torch.manual_seed(0)
    guide = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", ["happiness", "sadness"], (1, 16, 16),
                                                  model_kwargs={"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)}))
    guide.save_pretrained(tmp_path / "guide")
    syn = generate(tmp_path / "syn", pipeline=str(tmp_path / "dit"), per_class=2, expressions=["happiness", "sadness"],
                   au_source="prototype", semantic_guidance=0.05, guidance_model=str(tmp_path / "guide"),
                   preview=False)
    records = list(DatasetFolder(syn).records())
    assert len(records) == 4 and all(r.meta["guidance"]["scale"] == 0.05 for r in records)
    patterns = write_pattern_dataset(tmp_path / "patterns", per_class={"train": 12, "val": 4, "test": 2})
    head = call(train_annotator, [patterns], tmp_path / "feranno", pipeline=str(tmp_path / "dit"), grid=4, dim=16,
                heads=2, attention_tokens=5, epochs=2, batch_size=16, lr=3e-3, read_batch_size=16)
    labelled = DatasetFolder(label(patterns, tmp_path / "labelled", [str(head)], split="test"))
    assert len(labelled) == 2 * len(PATTERN_CLASSES)
    assert all(r.expression in PATTERN_CLASSES for r in labelled.records())
